"""The sample-data generator: determinism, fidelity to the official layouts, and agreement with the ground truth."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.samples import make_samples
from pipeline.samples.categories import COCO_CATEGORIES, STUFF_NAMES, UNUSED_THING_NAMES

UNUSED_VALUES = {cid - 1 for cid in UNUSED_THING_NAMES}


@pytest.fixture(scope="module")
def samples(samples_seed0):
    return samples_seed0


@pytest.fixture(scope="module")
def scenes(samples):
    return json.loads(samples.scenes_json.read_text())


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refs pickle references {module}.{name}; only builtin types are allowed")


def test_same_seed_is_byte_identical_via_cli_and_other_seed_differs(samples, tmp_path):
    from smartedit_cli.main import main

    assert main(["samples", "make", str(tmp_path / "again"), "--seed", "0"]) == 0
    first, again = _digests(samples.root), _digests(tmp_path / "again")
    assert len(first) > 150 and first == again
    other = make_samples(tmp_path / "again", seed=1)  # over the seed-0 set: it must be replaced, not mixed
    changed = _digests(other.root)
    common = set(first) & set(changed)
    assert sum(first[k] != changed[k] for k in common) > 0.9 * len(common)
    for split, n in other.counts["reasonseg"].items():
        assert len(list((other.reasonseg / split).glob("*.json"))) == n


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="samples.json"):
        make_samples(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_samples_json_lists_layout_counts_and_quirks(samples):
    doc = json.loads(samples.samples_json.read_text())
    assert doc["seed"] == 0 and doc["counts"] == samples.counts
    for rel in doc["layout"].values():
        assert (samples.root / rel).is_dir(), rel
    assert doc["layout"]["refer_images"] == "coco/train2017"
    assert samples.counts["coco"] == {"train2017": 24, "val2017": 8}
    assert len(list((samples.coco / "train2017").glob("*.jpg"))) == 24
    assert sum(samples.counts["refcoco_unc"].values()) >= 30


def test_coco_annotations_load_in_pycocotools_and_match_the_rendered_truth(samples, scenes):
    from pycocotools.coco import COCO

    truth = {(s["split"], s["image_id"]): s for s in scenes if s["source"] == "coco"}
    crowd = 0
    for split in ("train2017", "val2017"):
        coco = COCO(str(samples.coco / "annotations" / f"instances_{split}.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"], c["supercategory"]) for c in cats] == list(COCO_CATEGORIES)
        assert set(coco.dataset) >= {"info", "licenses", "images", "annotations", "categories"}
        for image_id in coco.getImgIds():
            info, scene = coco.loadImgs(image_id)[0], truth[(split, image_id)]
            assert (samples.coco / split / info["file_name"]).is_file()
            assert info["file_name"] == f"{image_id:012d}.jpg"
            assert (info["width"], info["height"]) == (scene["width"], scene["height"])
            by_ann = {o["ann_id"]: o for o in scene["objects"]}
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
            assert {a["id"] for a in anns} == set(by_ann)
            for ann in anns:
                obj = by_ann[ann["id"]]
                mask = coco.annToMask(ann)
                assert abs(int(mask.sum()) - obj["area"]) <= 2
                ys, xs = np.nonzero(mask)
                assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == obj["bbox"]
                assert np.allclose([xs.mean(), ys.mean()], obj["centroid"], atol=0.5)
                assert ann["category_id"] == obj["category_id"] and ann["bbox"] == obj["bbox"]
                assert bool(ann["iscrowd"]) == obj["iscrowd"]
                if ann["iscrowd"]:
                    crowd += 1
                    assert isinstance(ann["segmentation"]["counts"], list)
                else:
                    assert isinstance(ann["segmentation"], list) and all(len(p) >= 6 for p in ann["segmentation"])
    assert crowd >= 2


def test_scenes_cover_the_reasoning_layouts(scenes):
    coco = [s for s in scenes if s["source"] == "coco"]
    kinds = {s["kind"] for s in coco}
    assert {"multi", "colours", "mirror", "crowd", "people", "mixed"} <= kinds
    for s in coco:
        objs = s["objects"]
        if s["kind"] == "colours":
            assert len({o["colour"] for o in objs}) == len(objs) >= 2 and len({o["category"] for o in objs}) == 1
        if s["kind"] == "multi":
            areas = sorted(o["area"] for o in objs)
            assert len(objs) >= 2 and all(b >= 1.8 * a for a, b in itertools.pairwise(areas))
        if s["kind"] == "mirror":
            (mirror,) = s["mirrors"]
            x, y, w, h = mirror["bbox"]
            inside = [o for o in objs if o["in_mirror"]]
            assert len(inside) == 1
            bx, by, bw, bh = inside[0]["bbox"]
            assert x <= bx and y <= by and bx + bw <= x + w and by + bh <= y + h
            assert any(o["category"] == inside[0]["category"] and not o["in_mirror"] for o in objs)


def test_palette_colours_are_far_apart_in_cielab():
    from skimage.color import rgb2lab

    from pipeline.samples.palette import COLOURS

    lab = rgb2lab(np.array([list(COLOURS.values())], dtype=np.float64) / 255.0)[0]
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(lab, 2)]
    assert min(distances) > 25


def test_refer_pickles_hold_only_builtins_and_resolve_through_instances(samples, scenes):
    from pycocotools.coco import COCO

    truth = {o["ann_id"]: o for s in scenes if s["source"] == "coco" for o in s["objects"]}
    allowed = {"unc": {"train", "val", "testA", "testB"}, "umd": {"train", "val", "test"}, "google": {"train", "val"}}
    for dataset, split_bys in (("refcoco", ["unc"]), ("refcoco+", ["unc"]), ("refcocog", ["umd", "google"])):
        coco = COCO(str(samples.refer / dataset / "instances.json"))
        for split_by in split_bys:
            raw = (samples.refer / dataset / f"refs({split_by}).p").read_bytes()
            assert raw[:2] == b"\x80\x02"  # protocol 2
            refs = _BuiltinsOnly(io.BytesIO(raw)).load()
            assert refs == pickle.loads(raw) and len(refs) >= 30
            per_split = {k: sum(r["split"] == k for r in refs) for k in {r["split"] for r in refs}}
            assert samples.counts[f"{dataset}_{split_by}"] == per_split
            sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
            assert len(sent_ids) == len(set(sent_ids))
            for ref in refs:
                assert ref["split"] in allowed[split_by]
                assert ref["file_name"] == f"COCO_train2014_{ref['image_id']:012d}_{ref['ann_id']}.jpg"
                assert not (samples.coco / "train2017" / ref["file_name"]).exists()
                assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
                for s in ref["sentences"]:
                    assert s["tokens"] == s["sent"].split() and s["sent"] == s["sent"].lower()
                ann = coco.loadAnns(ref["ann_id"])[0]
                image = coco.loadImgs(ref["image_id"])[0]
                assert (samples.root / "coco" / "train2017" / image["file_name"]).is_file()
                assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
                assert abs(int(coco.annToMask(ann).sum()) - truth[ref["ann_id"]]["area"]) <= 2
                if ref["split"] == "testA":
                    assert ref["category_id"] == 1
                if ref["split"] == "testB":
                    assert ref["category_id"] != 1


def test_grefcoco_has_single_multi_and_no_target_refs(samples):
    from pycocotools.coco import COCO

    refs = json.loads((samples.grefcoco / "grefs(unc).json").read_text())
    coco = COCO(str(samples.grefcoco / "instances.json"))
    multi = [r for r in refs if len(r["ann_id"]) >= 2]
    empty = [r for r in refs if r["no_target"]]
    assert multi and empty and any(len(r["ann_id"]) == 1 and r["ann_id"] != [-1] for r in refs)
    assert all(len(r["ann_id"]) <= 3 for r in refs)
    for r in empty:
        assert r["ann_id"] == [-1] and r["category_id"] in ([-1], [])
    for r in refs:
        assert isinstance(r["ann_id"], list) and isinstance(r["category_id"], list)
        assert r["split"] in {"train", "val", "testA", "testB"}
        if not r["no_target"]:
            anns = coco.loadAnns(r["ann_id"])
            assert [a["category_id"] for a in anns] == r["category_id"]
            assert all(a["image_id"] == r["image_id"] for a in anns)


def test_cocostuff_maps_are_label_images_matching_the_instances(samples, scenes):
    lines = (samples.cocostuff / "labels.txt").read_text().splitlines()
    assert len(lines) == 183 and lines[0] == "0: unlabeled" and lines[1] == "1: person"
    assert {"12: street sign", "66: mirror", "91: hair brush", "92: banner", "182: wood"} <= set(lines)
    assert lines[92:] == [f"{92 + i}: {n}" for i, n in enumerate(STUFF_NAMES)]
    allowed = ({cid - 1 for cid, _, _ in COCO_CATEGORIES} | set(range(91, 182)) | {255})
    seen: set[int] = set()
    for s in (s for s in scenes if s["source"] == "coco"):
        label_map = Image.open(samples.cocostuff / "stuffthingmaps_trainval2017" / s["split"] / f"{s['image_id']:012d}.png")
        shown = ImageOps.exif_transpose(Image.open(samples.root / s["path"]))
        assert label_map.mode == "L" and label_map.size == shown.size == (s["width"], s["height"])
        values = np.asarray(label_map)
        seen |= set(np.unique(values).tolist())
        for obj in s["objects"]:
            x, y, w, h = (int(v) for v in obj["bbox"])
            assert (values[y: y + h, x: x + w] == obj["category_id"] - 1).sum() >= obj["area"] - 2
    assert seen <= allowed and not seen & UNUSED_VALUES
    assert 255 in seen and 91 + STUFF_NAMES.index("mirror-stuff") in seen


def test_coco_quirks_exif_gray_and_cmyk(samples, scenes):
    quirks = samples.quirks
    from pipeline.samples.scenes import rasterise

    assert set(quirks["exif_orientation"].values()) >= {6, 8}
    annotations, segmentations = {}, {}
    for split in ("train2017", "val2017"):
        doc = json.loads((samples.coco / "annotations" / f"instances_{split}.json").read_text())
        annotations.update({f"coco/{split}/{i['file_name']}": i for i in doc["images"]})
        segmentations.update({a["id"]: a["segmentation"] for a in doc["annotations"]})
    for rel, orientation in quirks["exif_orientation"].items():
        stored = Image.open(samples.root / rel)
        assert stored.getexif()[0x0112] == orientation
        shown = ImageOps.exif_transpose(stored)
        info = annotations[rel]
        assert shown.size == (info["width"], info["height"])
        if orientation in (6, 8):
            assert stored.size == (info["height"], info["width"]) != shown.size
        # Applying the tag must give the annotated orientation: each object's pixels have its colour.
        pixels = np.asarray(shown.convert("RGB")).astype(float)
        scene = next(s for s in scenes if s["path"] == rel)
        for obj in scene["objects"]:
            if not obj["in_mirror"] and not obj["iscrowd"]:
                mask = rasterise(segmentations[obj["ann_id"]], info["height"], info["width"])
                assert np.abs(pixels[mask].mean(axis=0) - obj["rgb"]).max() < 25, obj
    (gray,) = quirks["grayscale"]
    (cmyk,) = quirks["cmyk"]
    assert Image.open(samples.root / gray).mode == "L"
    assert Image.open(samples.root / cmyk).mode == "CMYK"


def test_llava_records(samples):
    records = json.loads((samples.llava / "llava_instruct_150k.json").read_text())
    assert len(records) == samples.counts["llava_instruct_150k"]["train"] >= 20
    leading = trailing = 0
    for r in records:
        assert set(r) == {"id", "image", "conversations"} and r["image"] == f"{r['id']}.jpg"
        assert (samples.coco / "train2017" / r["image"]).is_file()
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == turns[0]["value"].count("<image>") == 1
        leading += turns[0]["value"].startswith("<image>\n")
        trailing += turns[0]["value"].endswith("\n<image>")
    assert leading and trailing and leading + trailing == len(records)
    assert len({r["id"] for r in records}) < len(records)


def _read_reasonseg_json(path: Path) -> tuple[dict, str]:
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        return json.loads(raw.decode("cp1252")), "cp1252"


def test_reasonseg_layout_and_quirks(samples, scenes):
    from pipeline.samples.scenes import rasterise

    truth = {s["path"]: s for s in scenes if s["source"] == "reasonseg"}
    encodings, labels = [], []
    for split, n in samples.counts["reasonseg"].items():
        jpgs = sorted((samples.reasonseg / split).glob("*.jpg"))
        assert len(jpgs) == n
        for jpg in jpgs:
            doc, encoding = _read_reasonseg_json(jpg.with_suffix(".json"))
            encodings.append(encoding)
            assert set(doc) == {"text", "is_sentence", "shapes"} and doc["text"] and isinstance(doc["is_sentence"], bool)
            width, height = Image.open(jpg).size
            target = [sum(([x, y] for x, y in s["points"]), []) for s in doc["shapes"] if s["label"] == "target"]
            assert all(s["shape_type"] == "polygon" for s in doc["shapes"])
            labels += [s["label"] for s in doc["shapes"]]
            assert int(rasterise(target, height, width).sum()) == truth[f"ReasonSeg/{split}/{jpg.name}"]["target_area"]
    assert (samples.reasonseg / "train" / "img 2.0 final.jpg").is_file()
    assert (samples.reasonseg / "train" / "img 2.0 final.json").is_file()
    assert encodings.count("cp1252") == 1
    assert "flag" in labels and any("ignore" in label for label in labels)
    assert set(labels) <= {"target", "flag", "ignore", "ignore_1"}
    explanatory = json.loads((samples.reasonseg / "explanatory" / "train.json").read_text())
    assert explanatory and all(set(e) == {"image", "query", "outputs"} for e in explanatory)
    assert all((samples.reasonseg / "train" / e["image"]).is_file() for e in explanatory)


def _image(cell) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")).astype(int)


def test_parquet_files_have_the_hub_columns(samples):
    import pyarrow.parquet as pq

    ip2p = pq.read_table(samples.instructpix2pix_parquet / "data" / "train-00000-of-00001.parquet")
    assert ip2p.column_names == ["original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image"]
    assert ip2p.num_rows == samples.counts["instructpix2pix_parquet"]["train"]
    assert b"huggingface" in ip2p.schema.metadata
    row = ip2p.slice(0, 1).to_pylist()[0]
    assert set(row["original_image"]) == {"bytes", "path"} and _image(row["edited_image"]).shape[2] == 3

    current = ["img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img"]
    for split in ("train", "dev"):
        rows = pq.read_table(samples.magicbrush / "data" / f"{split}-00000-of-00001.parquet").to_pylist()
        assert list(rows[0]) == current and len(rows) == samples.counts["magicbrush"][split]
        by_session = {}
        for r in rows:
            by_session.setdefault(r["img_id"], []).append(r)
            mask = Image.open(io.BytesIO(r["mask_img"]["bytes"]))
            assert mask.mode == "RGB"
            white = np.asarray(mask)[..., 0] == 255
            changed = np.abs(_image(r["source_img"]) - _image(r["target_img"])).sum(axis=2) > 0
            assert changed.any() and not (changed & ~white).any()  # PNG pairs: nothing changes outside the mask
        sessions = [turns for turns in by_session.values() if len(turns) == 2]
        assert sessions
        for first, second in sessions:
            assert (first["turn_index"], second["turn_index"]) == (1, 2)
            assert second["source_img"]["bytes"] == first["target_img"]["bytes"]
    legacy = pq.read_table(samples.magicbrush / "legacy" / "train-00000-of-00001.parquet")
    assert legacy.column_names == ["img_id", "turn_index", "input_img", "instruction", "output_img"]


def test_instructpix2pix_folder_layout(samples):
    root = samples.instructpix2pix_folder
    seeds = json.loads((root / "seeds.json").read_text())
    assert sum(len(s) for _, s in seeds) == samples.counts["instructpix2pix_folder"]["train"]
    for name, seed_list in seeds:
        assert len(name) == 7 and name.isdigit()
        prompt = json.loads((root / name / "prompt.json").read_text())
        assert set(prompt) == {"input", "edit", "output"}
        metadata = [json.loads(line) for line in (root / name / "metadata.jsonl").read_text().splitlines()]
        assert {str(m["seed"]) for m in metadata} >= set(seed_list)
        assert all({"clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image"} <= set(m) for m in metadata)
        for seed in seed_list:
            assert isinstance(seed, str)
            before, after = Image.open(root / name / f"{seed}_0.jpg"), Image.open(root / name / f"{seed}_1.jpg")
            assert before.size == after.size
    assert not list(root.rglob(f"{Path(samples.quirks['ip2p_metadata_only_seed']).name}_0.jpg"))


def test_reason_edit_folders_pair_pngs_masks_and_lines(samples):
    from pipeline.samples.reason_edit import CATEGORIES

    assert sorted(p.name for p in samples.reason_edit.iterdir()) == list(CATEGORIES)
    grey_levels = set()
    for folder in samples.reason_edit.iterdir():
        pngs = sorted(folder.glob("*.png"))
        masks = sorted(folder.glob("*_mask.jpg"))
        (text,) = folder.glob("*.txt")
        lines = text.read_text().splitlines()
        assert len(pngs) == len(masks) == len(lines) == samples.counts["reason_edit"][folder.name]
        for png, mask, line in zip(pngs, masks, lines):
            assert mask.name == png.stem + "_mask.jpg" and line.count(" CLIP: ") == 1
            m = np.asarray(Image.open(mask).convert("L"))
            assert m.shape == np.asarray(Image.open(png)).shape[:2] and (m > 127).any()
            grey_levels |= set(np.unique(m).tolist())
    assert grey_levels - {0, 255}  # JPEG masks are not exactly binary
