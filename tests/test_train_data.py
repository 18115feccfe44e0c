"""Training data: mixture ratios and rank streams, colour-overlay rendering, shard → example decoding.

Also the shard-writing helpers the other test_train_* files import (tiny webdataset shards + a
wids shardindex.json written here, independent of pipeline/).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import MixtureDataset, TrainExample, decode_members, make_dataloader, render_example
from model.mixture import (
    MixtureSampler,
    build_mixture,
    load_mixture_spec,
    read_dataset_ref,
    uniform_mixture,
)
from model.overlay import blend_overlay, labelmap_edit, load_templates, reasoning_edit, referring_edit


# ----------------------------------------------------------------------------------------------- fixtures
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _image(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_sample(kind: str, i: int, rng: np.random.Generator, size: int = 24) -> dict:
    """One sample of ``kind`` in the fixed schema (data_specs/schemas.yaml), members as bytes."""
    meta = {"kind": kind, "source": "fixture", "split": "train", "source_id": str(i)}
    files: dict[str, bytes] = {}
    mask = np.zeros((size, size), np.uint8)
    mask[4:12, 6:14] = 255
    if kind == "edit_pair":
        files = {"src.png": _png(_image(rng, size)), "tgt.png": _png(_image(rng, size))}
        meta |= {"instruction": f"make it blue {i}", "instructions": [f"make it blue {i}", f"turn it blue {i}"]}
    elif kind == "seg_labelmap":
        seg = np.full((size, size), 255, np.uint8)
        seg[:8] = 3
        seg[8:16] = 120
        files = {"png": _png(_image(rng, size)), "seg.png": _png(seg)}
        meta |= {"classes": [{"id": 3, "name": "motorcycle"}, {"id": 120, "name": "grass"}]}
    elif kind == "referring_mask":
        files = {"png": _png(_image(rng, size)), "mask.png": _png(mask)}
        meta |= {"sentences": [f"the left cat {i}"], "no_target": False}
    elif kind == "reasoning_seg":
        ignore = np.zeros((size, size), np.uint8)
        ignore[4:8, 6:14] = 255
        files = {"png": _png(_image(rng, size)), "mask.png": _png(mask), "ignore.png": _png(ignore)}
        meta |= {"sentences": ["What can be used to cut paper?"], "is_sentence": True}
    elif kind == "vqa":
        files = {"png": _png(_image(rng, size))}
        meta |= {"conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": f"A test {i}."}]}
    elif kind == "caption":
        meta |= {"caption": f"a photo of object number {i}"}
    else:
        raise ValueError(kind)
    return {"__key__": f"{kind}-{i:05d}", "json": json.dumps(meta).encode(), **files}


def write_dataset(root: Path, name: str, source: str, kind: str, n: int, *, shard_size: int = 4, seed: int = 0,
                  size: int = 24) -> Path:
    """Write ``n`` samples as tar shards + shardindex.json under root/name; return the index path."""
    import webdataset as wds

    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shardlist = []
    for s, start in enumerate(range(0, n, shard_size)):
        path = out / f"{name}-{s:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in range(start, min(n, start + shard_size)):
                writer.write(make_sample(kind, i, rng, size))
        data = path.read_bytes()
        shardlist.append({"url": path.name, "nsamples": min(n, start + shard_size) - start, "filesize": len(data),
                          "md5sum": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()})
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name, "shardlist": shardlist,
             "provenance": {"source": source}, "counts": {"kept": n, "sources": {source: n}}}
    (out / "shardindex.json").write_text(json.dumps(index))
    return out / "shardindex.json"


def write_index_only(root: Path, name: str, source: str, nsamples: int) -> Path:
    """A manifest without shards: enough for the sampler, which reads metadata only."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
             "shardlist": [{"url": f"{name}-000000.tar", "nsamples": nsamples, "filesize": 0, "md5sum": ""}],
             "provenance": {"source": source}}
    (out / "shardindex.json").write_text(json.dumps(index))
    return out / "shardindex.json"


def write_stage2_datasets(root: Path, n: int = 6) -> list[Path]:
    """One small dataset per stage-2 source kind."""
    return [
        write_dataset(root, "synthetic", "synthetic", "edit_pair", n, seed=1),
        write_dataset(root, "magicbrush", "magicbrush", "edit_pair", n, seed=2),
        write_dataset(root, "reasonseg", "reasonseg", "reasoning_seg", n, seed=3),
        write_dataset(root, "cocostuff", "cocostuff", "seg_labelmap", n, seed=4),
        write_dataset(root, "refcoco", "refcoco", "referring_mask", n, seed=5),
        write_dataset(root, "llava", "llava-instruct", "vqa", n, seed=6),
    ]


# ----------------------------------------------------------------------------------------------- mixture
SIZES = {"synthetic": 476, "reasonseg": 239, "llava-instruct": 157_712, "magicbrush": 8_807,
         "instructpix2pix": 313_010, "cocostuff": 118_000, "refcoco": 120_000, "refcoco+": 120_000,
         "refcocog": 80_000, "grefcoco": 210_000}


def expected_probs() -> dict[str, float]:
    s = SIZES
    rest = 0.85 * 0.90
    edit, refer = s["magicbrush"] + s["instructpix2pix"], s["refcoco"] + s["refcoco+"] + s["refcocog"]
    seg = s["cocostuff"] + refer + s["grefcoco"]
    total = s["llava-instruct"] + edit + seg
    return {
        "synthetic": 0.15, "reasonseg": 0.85 * 0.10,
        "llava-instruct": rest * s["llava-instruct"] / total,
        "magicbrush": rest * edit / total / 2, "instructpix2pix": rest * edit / total / 2,
        "cocostuff": rest * seg / total * s["cocostuff"] / seg,
        "refcoco": rest * seg / total * refer / seg, "grefcoco": rest * seg / total * s["grefcoco"] / seg,
    }


@pytest.fixture()
def full_mixture(tmp_path):
    manifests = [write_index_only(tmp_path, name, name, n) for name, n in SIZES.items()]
    return build_mixture(load_mixture_spec(), manifests)


def test_mixture_probabilities_follow_the_paper_rules(full_mixture):
    probs = {leaf.name: leaf.prob for leaf in full_mixture.leaves}
    want = expected_probs()
    assert probs.keys() == want.keys()
    for name, p in want.items():
        assert probs[name] == pytest.approx(p, rel=1e-9), name
    assert sum(probs.values()) == pytest.approx(1.0)


def test_mixture_sampler_ratios_over_20k_draws(full_mixture):
    sampler = MixtureSampler(full_mixture, rank=0, seed=7)
    n = 20_000
    counts: dict[str, int] = {}
    per_dataset: dict[str, int] = {}
    for i in range(n):
        d = sampler.draw(i)
        counts[d.leaf] = counts.get(d.leaf, 0) + 1
        ref = full_mixture.datasets[d.dataset]
        assert 0 <= d.sample < ref.nsamples
        per_dataset[ref.source] = per_dataset.get(ref.source, 0) + 1
    for name, p in expected_probs().items():
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(counts.get(name, 0) / n - p) < 5 * sigma + 1e-3, (name, counts.get(name, 0) / n, p)
    # inside the refcoco leaf, datasets are drawn by size (RefCOCO : RefCOCO+ : RefCOCOg = 120 : 120 : 80)
    refer = per_dataset["refcoco"] + per_dataset["refcoco+"] + per_dataset["refcocog"]
    assert per_dataset["refcocog"] / refer == pytest.approx(80 / 320, abs=0.05)


def test_ranks_draw_different_streams_and_draws_are_reproducible(full_mixture):
    a, b = MixtureSampler(full_mixture, rank=0, seed=1), MixtureSampler(full_mixture, rank=1, seed=1)
    stream_a = [(d.dataset, d.sample) for d in map(a.draw, range(200))]
    stream_b = [(d.dataset, d.sample) for d in map(b.draw, range(200))]
    assert stream_a != stream_b
    assert sum(x == y for x, y in zip(stream_a, stream_b)) < 20
    again = MixtureSampler(full_mixture, rank=0, seed=1)
    assert [again.draw(i) for i in (150, 3, 77)] == [a.draw(i) for i in (150, 3, 77)]


def test_missing_leaf_is_an_error_unless_allowed(tmp_path):
    manifests = [write_index_only(tmp_path, "magicbrush", "magicbrush", 10),
                 write_index_only(tmp_path, "llava", "llava-instruct", 30)]
    with pytest.raises(ValueError, match="no samples for leaves"):
        build_mixture(load_mixture_spec(), manifests)
    mix = build_mixture(load_mixture_spec(), manifests, allow_missing=True)
    probs = {leaf.name: leaf.prob for leaf in mix.leaves}
    assert probs == pytest.approx({"magicbrush": 0.25, "llava-instruct": 0.75})


def test_invalid_spec_names_the_file_and_field(tmp_path):
    bad = tmp_path / "mix.yaml"
    bad.write_text("name: x\nroot: {name: r, select: chain, children: [{name: a, p: 0.2, sources: [a]}, {name: b, p: 0.5, sources: [b]}]}\n")
    with pytest.raises(ValueError, match=r"mix\.yaml(.|\n)*last chain child .b."):
        load_mixture_spec(bad)


# ----------------------------------------------------------------------------------------------- overlay
def test_blend_is_an_exact_half_inside_and_identity_outside():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3) * 3
    image[1, 2] = (100, 101, 7)
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    out = blend_overlay(image, mask, (255, 0, 128))
    assert np.array_equal(out[~mask], image[~mask])
    # hand-computed halves: (100+255)/2 = 177.5 -> 178, (101+0)/2 = 50.5 -> 51, (7+128)/2 = 67.5 -> 68
    assert out[1, 2].tolist() == [178, 51, 68]
    inside = image[mask].astype(float)
    assert np.abs(out[mask] - (inside + np.array([255, 0, 128])) / 2).max() <= 0.5


@pytest.mark.parametrize("mask,no_target", [(np.zeros((16, 16), bool), False),  # an empty mask (absent object)
                                             (np.zeros((16, 16), bool), True),   # gRefCOCO no-target, empty mask
                                             (np.ones((16, 16), bool), True)])   # no_target wins over any mask
def test_empty_mask_gives_identity_edit_with_identity_instruction(mask, no_target):
    t = load_templates()
    image = _image(np.random.default_rng(0), 16)
    edit = referring_edit(image, mask, ["the dog"], no_target, np.random.default_rng(1))
    assert edit.identity and edit.color is None
    assert np.array_equal(edit.target, image)
    assert edit.instruction in {s.format(object="the dog") for s in t.identity}
    # the same sentence with a non-empty mask is a real overlay edit (the identity above is not the default)
    marked = referring_edit(image, np.eye(16, dtype=bool), ["the dog"], False, np.random.default_rng(1))
    assert not marked.identity and not np.array_equal(marked.target, image)


def test_labelmap_picks_a_present_class_and_marks_exactly_its_pixels():
    t = load_templates()
    image = _image(np.random.default_rng(0), 16)
    labels = np.full((16, 16), 255, np.uint8)
    labels[:5] = 7
    labels[5:9] = 40
    classes = [{"id": 7, "name": "train"}, {"id": 40, "name": "bottle"}]
    seen = set()
    for seed in range(20):
        edit = labelmap_edit(image, labels, classes, np.random.default_rng(seed))
        name = "train" if "train" in edit.instruction else "bottle"
        seen.add(name)
        region = labels == (7 if name == "train" else 40)
        assert np.array_equal(edit.target, blend_overlay(image, region, t.colors[edit.color]))
        assert edit.color.lower() in edit.instruction
    assert seen == {"train", "bottle"}


def test_reasonseg_ignore_region_is_not_painted():
    image = _image(np.random.default_rng(0), 16)
    mask = np.zeros((16, 16), bool)
    mask[2:10, 2:10] = True
    ignore = np.zeros((16, 16), bool)
    ignore[2:5, 2:10] = True
    edit = reasoning_edit(image, mask, ignore, ["What holds the flowers?"], True, np.random.default_rng(3))
    assert np.array_equal(edit.target[ignore], image[ignore])
    assert not np.array_equal(edit.target[5:10, 2:10], image[5:10, 2:10])
    assert edit.instruction.startswith("What holds the flowers?")


def test_template_file_has_the_11_mark_templates_and_8_colours():
    t = load_templates()
    assert len(t.mark) == 11 and len(set(t.mark)) == 11
    assert set(t.colors) == {"Red", "Purple", "Blue", "Green", "Yellow", "White", "Black", "Gray"}
    assert "Mark the pixels of {object} in {color} and leave the rest unchanged." in t.mark


# ----------------------------------------------------------------------------------------------- shards → examples
def test_every_kind_renders_from_real_shards(tmp_path):
    manifests = write_stage2_datasets(tmp_path)
    mix = build_mixture(load_mixture_spec(), manifests, allow_missing=True)
    ds = MixtureDataset(mix, featurize=lambda ex: ex, resolution=16)
    kinds = {}
    for i in range(120):
        ex: TrainExample = ds[i]
        kinds.setdefault(ex.kind, ex)
        assert ex.source.size == (16, 16) and ex.target.size == (16, 16)
    assert set(kinds) == {"edit_pair", "reasoning_seg", "seg_labelmap", "referring_mask", "vqa"}
    assert kinds["vqa"].is_edit is False and kinds["vqa"].answer.startswith("A test")
    assert "<image>" not in kinds["vqa"].instruction
    assert all(kinds[k].is_edit for k in ("edit_pair", "reasoning_seg", "seg_labelmap", "referring_mask"))
    # the same draw index always renders the same example (resume relies on it)
    fresh = MixtureDataset(mix, featurize=lambda ex: ex, resolution=16)
    a, b = ds[17], fresh[17]
    assert (a.key, a.instruction) == (b.key, b.instruction)
    assert np.array_equal(np.array(a.target), np.array(b.target))


def test_referring_overlay_matches_the_mask_after_resize(tmp_path):
    index = write_dataset(tmp_path, "refcoco", "refcoco", "referring_mask", 1, size=24)
    mix = uniform_mixture([index])
    ex = MixtureDataset(mix, featurize=lambda e: e, resolution=24).example(0)
    src, tgt = np.array(ex.source), np.array(ex.target)
    mask = np.zeros((24, 24), bool)
    mask[4:12, 6:14] = True
    assert np.array_equal(src[~mask], tgt[~mask])
    color = next(c for name, c in load_templates().colors.items() if name.lower() in ex.instruction)
    assert np.array_equal(tgt, blend_overlay(src, mask, color))


def test_decode_keeps_masks_single_channel(tmp_path):
    sample = make_sample("reasoning_seg", 0, np.random.default_rng(0))
    raw = {("." + k if not k.startswith("__") else k): io.BytesIO(v) if isinstance(v, bytes) else v for k, v in sample.items()}
    dec = decode_members(raw)
    assert dec["mask.png"].ndim == 2 and dec["ignore.png"].ndim == 2 and dec["png"].mode == "RGB"
    ex = render_example(dec, np.random.default_rng(0), resolution=24)
    assert ex.kind == "reasoning_seg"


def test_dataloader_resumes_the_stream_at_a_draw_index(tmp_path):
    index = write_dataset(tmp_path, "caps", "cc12m", "caption", 20)
    assert read_dataset_ref(index).nsamples == 20
    ds = MixtureDataset(uniform_mixture([index]), featurize=lambda ex: {"text": ex.caption}, resolution=8)
    collate = lambda items: [x["text"] for x in items]  # noqa: E731
    it = iter(make_dataloader(ds, batch_size=3, collate_fn=collate))
    batches = [next(it) for _ in range(4)]
    resumed = next(iter(make_dataloader(ds, batch_size=3, start=9, collate_fn=collate)))
    assert resumed == batches[3]


def test_a_bad_sample_is_an_error_naming_it_not_a_silent_redraw(tmp_path):
    from model.data import SampleError

    index = write_dataset(tmp_path, "caps", "cc12m", "caption", 4)
    # rewrite the shard with one caption sample that lacks its `caption` field
    import webdataset as wds

    shard = index.parent / "caps-000000.tar"
    with wds.TarWriter(str(shard)) as writer:
        for i in range(4):
            meta = {"kind": "caption", "source": "fixture"} | ({} if i == 2 else {"caption": f"c {i}"})
            writer.write({"__key__": f"caption-{i:05d}", "json": json.dumps(meta).encode()})
    ds = MixtureDataset(uniform_mixture([index]), featurize=lambda ex: ex, resolution=8)
    draws = [ds.sampler.draw(i) for i in range(40)]
    bad = next(d.draw_index for d in draws if d.sample == 2)
    good = next(d.draw_index for d in draws if d.sample != 2)
    assert ds[good].caption.startswith("c ")
    with pytest.raises(SampleError, match=rf"draw {bad}: sample 2 of .*caps/shardindex\.json is unusable: json has no field 'caption'"):
        ds[bad]
