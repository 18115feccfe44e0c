"""Every source reader on tiny official-layout trees: decoded with webdataset, compared with the source
(pycocotools' own mask decoding, an independent polygon fill, the source's texts and counts)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from convert_fixtures import build_sources
from pipeline.manifest import load_manifest
from pipeline.sources import SOURCES, convert_source
from pipeline.sources.safe_pickle import safe_load


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("convert")
    fx = build_sources(tmp / "src")
    out = tmp / "out"
    for source in SOURCES:
        convert_source(source, fx.roots[source], out, shard_size=2, **fx.options.get(source, {}))
    convert_source("instructpix2pix", fx.roots["instructpix2pix-parquet"], tmp / "out-parquet", shard_size=4)
    convert_source("magicbrush", fx.roots["magicbrush-legacy"], tmp / "out-legacy", shard_size=4)
    return fx, out, tmp


def samples(dataset_dir: Path) -> list[dict]:
    index = load_manifest(dataset_dir)
    urls = [str(dataset_dir / s["url"]) for s in index["shardlist"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())


def gray(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.mode == "L", "masks must be 8-bit single-channel"
    return np.asarray(img)


@pytest.mark.parametrize("source", SOURCES)
def test_counts_in_equal_kept_plus_rejected_with_reasons(converted, source):
    fx, out, _ = converted
    dataset = "refcocog" if source == "refcocog" else source
    for split, n in fx.counts[source].items():
        index = load_manifest(out / dataset / split)
        counts = index["counts"]
        assert counts["in"] == n, f"{source}/{split}: every source record is offered"
        assert counts["kept"] + counts["rejected"] == n
        assert counts["rejected_by_reason"] == fx.rejects[source].get(split, {})
        assert len(samples(out / dataset / split)) == counts["kept"]
        rejects = [json.loads(line) for line in (out / dataset / split / "rejects.jsonl").read_text().splitlines()]
        assert len(rejects) == counts["rejected"]
        assert all(r["location"] and r["detail"] for r in rejects)


def test_cocostuff_passes_label_maps_and_images_through(converted):
    fx, out, _ = converted
    root, images = fx.roots["cocostuff"], Path(fx.options["cocostuff"]["images"])
    got = samples(out / "cocostuff" / "train2017")
    assert len(got) == 4
    for s in got:
        meta = s["json"]
        stem = meta["image_id"]
        source_png = (root / "stuffthingmaps_trainval2017" / "train2017" / f"{stem}.png").read_bytes()
        assert s["seg.png"] == source_png
        assert s["jpg"] == (images / "train2017" / f"{stem}.jpg").read_bytes()
        values = sorted(set(np.unique(np.asarray(Image.open(io.BytesIO(source_png))))) - {255})
        assert [c["id"] for c in meta["classes"]] == values
        # names from the official labels.txt (value v = label id v + 1): 1 person, 2 bicycle, 96 building-other,
        # 101 carpet, 171 wall-brick; the fixture's maps use exactly these values (and 255, never a class)
        official = {0: "person", 1: "bicycle", 95: "building-other", 100: "carpet", 170: "wall-brick"}
        assert {c["id"]: c["name"] for c in meta["classes"]} == {v: official[v] for v in values}
        assert "__key__" in s and "." not in s["__key__"]


def test_cocostuff_lisa_dash_remap(converted, tmp_path):
    fx, _, _ = converted
    from pipeline.sources.cocostuff import BUILTIN_LABELS

    index = convert_source("cocostuff", fx.roots["cocostuff"], tmp_path, splits=["train2017"], lisa_dash_remap=True,
                           **fx.options["cocostuff"])
    assert index["train2017"]["counts"]["kept"] == 4
    for s in samples(tmp_path / "cocostuff" / "train2017"):
        seg = gray(s["seg.png"])
        assert s["json"]["seg_reencoded"] is True
        dashed = {v for v, n in enumerate(BUILTIN_LABELS) if "-" in n}
        assert not (set(np.unique(seg)) & dashed), "dash classes are 255 after the remap"
        assert 95 not in [c["id"] for c in s["json"]["classes"]]


@pytest.mark.parametrize("source", ["refcoco", "refcoco+", "refcocog"])
def test_refer_masks_equal_pycocotools_and_sentences_equal_source(converted, source):
    from pycocotools.coco import COCO

    fx, out, _ = converted
    dataset_dir = fx.roots[source] / source
    coco = COCO(str(dataset_dir / "instances.json"))
    split_by = "umd" if source == "refcocog" else "unc"
    refs = {r["ref_id"]: r for r in safe_load(dataset_dir / f"refs({split_by}).p")}
    got = samples(out / source / "train") + samples(out / source / "val")
    assert {s["json"]["ref_id"] for s in got} == {1, 2, 3, 4}
    for s in got:
        meta = s["json"]
        ref = refs[meta["ref_id"]]
        expected = coco.annToMask(coco.anns[ref["ann_id"]]) > 0
        np.testing.assert_array_equal(gray(s["mask.png"]), np.where(expected, 255, 0))
        assert meta["sentences"] == [x["sent"] for x in ref["sentences"]]
        assert meta["no_target"] is False and meta["kind"] == "referring_mask" and meta["source"] == source
        image_id = ref["image_id"]
        assert s["jpg"] == (Path(fx.options[source]["images"]) / f"{image_id:012d}.jpg").read_bytes()
    assert "red blob ünïcode" in [t for s in got for t in s["json"]["sentences"]]


def test_grefcoco_union_and_no_target(converted):
    from pycocotools.coco import COCO

    fx, out, _ = converted
    coco = COCO(str(fx.roots["grefcoco"] / "grefcoco" / "instances.json"))
    got = {s["json"]["ref_id"]: s for s in samples(out / "grefcoco" / "train") + samples(out / "grefcoco" / "val")}
    for ref_id, anns in ((1, [11, 12]), (3, [21, 22])):
        expected = np.any([coco.annToMask(coco.anns[a]) > 0 for a in anns], axis=0)
        np.testing.assert_array_equal(gray(got[ref_id]["mask.png"]), np.where(expected, 255, 0))
        assert got[ref_id]["json"]["no_target"] is False
    empty = got[2]
    assert empty["json"]["no_target"] is True and empty["json"]["sentences"] == ["the purple giraffe"]
    assert gray(empty["mask.png"]).max() == 0


def _even_odd_fill(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """Independent reference: a pixel is inside when its centre (col, row) crosses the edges an odd number of times."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    inside = np.zeros((h, w), bool)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        crosses = (b > ys) != (d > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = a + (ys - b) * (c - a) / (d - b)
        inside ^= crosses & (xs < xint)
    return inside


def test_reasonseg_masks_follow_lisa_fill_order(converted):
    from convert_fixtures import reasonseg_shapes

    fx, out, _ = converted
    got = samples(out / "reasonseg" / "train")
    assert sorted(s["json"]["image_file"] for s in got) == ["a.b c.jpg", "plain.jpg", "with.many.dots.jpg"]
    for s in got:
        meta = s["json"]
        w, h = meta["width"], meta["height"]
        shapes = [sh for sh in reasonseg_shapes(w, h) if sh["label"] != "flag"]
        regions = [(_even_odd_fill(np.asarray(sh["points"]), h, w), sh["label"]) for sh in shapes]
        label = np.zeros((h, w), np.uint8)
        for region, name in sorted(regions, key=lambda t: -t[0].sum()):
            label[region] = 255 if "ignore" in name else 1
        np.testing.assert_array_equal(gray(s["mask.png"]), np.where(label == 1, 255, 0))
        np.testing.assert_array_equal(gray(s["ignore.png"]), np.where(label == 255, 255, 0))
        assert (gray(s["ignore.png"]) > 0).any() and (gray(s["mask.png"]) > 0).any()
        src = json.loads((fx.roots["reasonseg"] / "train" / meta["image_file"].replace(".jpg", ".json")).read_text())
        assert meta["sentences"] == src["text"] and meta["is_sentence"] == src["is_sentence"]
        assert "." not in s["__key__"] and " " not in s["__key__"]
    explained = {s["json"]["image_file"]: s["json"].get("explanation") for s in got}
    assert explained == {"a.b c.jpg": "Because it is a chair.", "plain.jpg": None, "with.many.dots.jpg": None}


def test_llava_conversations_normalised_and_keyed_by_index(converted):
    fx, out, _ = converted
    src = json.loads((fx.roots["llava-instruct"] / "llava_instruct_150k.json").read_text())
    got = samples(out / "llava-instruct" / "train")
    assert len({s["__key__"] for s in got}) == len(got) == 3  # two records share id and image
    for s in got:
        meta = s["json"]
        record = src[int(meta["source_id"])]
        conv, orig = meta["conversations"], record["conversations"]
        assert conv[0]["value"].startswith("<image>\n") and conv[0]["value"].count("<image>") == 1
        assert conv[0]["value"][len("<image>\n"):] == orig[0]["value"].replace("<image>", "").strip()
        assert conv[1:] == orig[1:]
        assert s["jpg"] == (Path(fx.options["llava-instruct"]["images"]) / record["image"]).read_bytes()


def test_instructpix2pix_folder_and_parquet(converted):
    import pyarrow.parquet as pq

    fx, out, tmp = converted
    got = samples(out / "instructpix2pix" / "train")
    assert [s["json"]["instruction"] for s in got] == ["make it a dog", "make it a dog"]
    for s in got:
        d, seed = s["json"]["source_id"].split("/")
        assert s["src.jpg"] == (fx.roots["instructpix2pix"] / d / f"{seed}_0.jpg").read_bytes()
        assert s["tgt.jpg"] == (fx.roots["instructpix2pix"] / d / f"{seed}_1.jpg").read_bytes()
    rows = [r for f in sorted((fx.roots["instructpix2pix-parquet"] / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    got = samples(tmp / "out-parquet" / "instructpix2pix" / "train")
    assert len(got) == len(rows) == 6
    for s, row in zip(got, rows):
        assert s["json"]["instruction"] == row["edit_prompt"]
        assert s["src.jpg"] == row["original_image"]["bytes"] and s["tgt.jpg"] == row["edited_image"]["bytes"]


def test_magicbrush_both_revisions(converted):
    import pyarrow.parquet as pq

    fx, out, tmp = converted
    rows = pq.read_table(next((fx.roots["magicbrush"] / "data").glob("dev-*.parquet"))).to_pylist()
    got = samples(out / "magicbrush" / "dev")
    assert len(got) == len(rows) == 2
    for s, row in zip(got, rows):
        assert s["src.png"] == row["source_img"]["bytes"] and s["tgt.jpg"] == row["target_img"]["bytes"]
        expected = np.asarray(Image.open(io.BytesIO(row["mask_img"]["bytes"])).convert("L")) >= 128
        np.testing.assert_array_equal(gray(s["mask.png"]), np.where(expected, 255, 0))
        assert s["json"]["instruction"] == row["instruction"] and s["json"]["schema_revision"] == "current"
    legacy = samples(tmp / "out-legacy" / "magicbrush" / "train")
    assert [s["json"]["instruction"] for s in legacy] == ["make it red", "make it green"]
    assert all("mask.png" not in s and s["json"]["schema_revision"] == "legacy" for s in legacy)
