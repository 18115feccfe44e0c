"""The synthetic builder on converted referring shards: sample data → refcoco + grefcoco converters →
build from the shard directory; masks, left/right picks against the ground truth, skipped refs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.sources import convert_source
from pipeline.synthetic.build import BuildInputs, build, plan_build
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.export import read_samples
from pipeline.synthetic.shard_scenes import is_shard_input

SCENARIOS = {"left_right": 12, "relative_size": 4, "colour": 4, "multiple_objects": 4, "reasoning": 4, "mirror": 4}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, samples_seed0):
    tmp = tmp_path_factory.mktemp("shard_input")
    samples = samples_seed0
    out = tmp / "O"
    for source in ("refcoco", "grefcoco"):
        convert_source(source, samples.refer, out, images=samples.refer_images)
    return samples, out


@pytest.fixture(scope="module")
def built(converted, tmp_path_factory):
    samples, shards = converted
    out = tmp_path_factory.mktemp("built")
    cfg = SyntheticConfig(scenarios=SCENARIOS, leakage_guard=False, shard_size=8, dilate_px=0, remove_dilate_px=0,
                          verify=False)  # edit mask = the object's mask
    # scenes.json: mirror regions (shards have none), so reflections are not taken for objects
    result = build(cfg, BuildInputs(input=str(shards), scenes=str(samples.scenes_json)), out)
    return samples, shards, out, result


def _mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))) > 127


def _converted_masks(shards: Path) -> dict[int, np.ndarray]:
    """ann_id → mask.png of its single-target refs, read with tarfile (not the builder's webdataset path)."""
    masks: dict[int, np.ndarray] = {}
    for index in sorted(shards.rglob("shardindex.json")):
        for _, meta, files in read_samples(index):
            if len(meta["ann_ids"]) == 1 and not meta["no_target"]:
                masks.setdefault(meta["ann_ids"][0], _mask(files["mask.png"]))
    return masks


def test_detects_shard_input(converted):
    samples, shards = converted
    assert is_shard_input(shards) and is_shard_input(shards / "refcoco" / "train")
    assert is_shard_input(shards / "refcoco" / "train" / "shardindex.json")
    assert not is_shard_input(samples.root)  # the COCO sample-data layout keeps its meaning
    assert not is_shard_input(next((samples.coco / "annotations").glob("instances_*.json")))


def test_pairs_use_the_converted_masks(built):
    _, shards, out, result = built
    converted = _converted_masks(shards)
    pairs = list(read_samples(out))
    assert len(pairs) == result["kept"] > 0
    assert result["kept_by_scenario"].get("left_right", 0) > 0
    for key, meta, files in pairs:
        ann_id = meta["target"]["ann_id"]
        assert ann_id in converted, key
        assert np.array_equal(_mask(files["mask.png"]), converted[ann_id]), key
        src, tgt = np.asarray(Image.open(io.BytesIO(files["src.png"]))), np.asarray(Image.open(io.BytesIO(files["tgt.png"])))
        assert np.array_equal(src[~converted[ann_id]], tgt[~converted[ann_id]]), key


def test_left_right_matches_ground_truth(built):
    """Where every ground-truth instance of the target's category was referred (so is in the scene), the
    left/right pick is the ground truth's leftmost/rightmost. Unreferred instances are invisible to the
    builder (see shard_scenes.py), so other picks are not comparable."""
    samples, _, out, _ = built
    gt = {s["image_id"]: s for s in json.loads(samples.scenes_json.read_text()) if s.get("source") == "coco"}
    in_scene = {a["id"] for p in (out / "input_scenes" / "annotations").glob("instances_*.json")
                for a in json.loads(p.read_text())["annotations"]}
    checked = 0
    for key, meta, _ in read_samples(out):
        position = meta["selector"].get("position")
        if meta["scenario"] != "left_right" or position not in ("left", "right"):
            continue
        image_id = int(Path(meta["source_id"].split("#")[0]).stem)
        assert not meta["target"]["in_mirror"], key
        same = [o for o in gt[image_id]["objects"] if o["category"] == meta["target"]["category"] and not o["in_mirror"]]
        if not {o["ann_id"] for o in same} <= in_scene:
            continue
        xs = {o["ann_id"]: o["centroid"][0] for o in same}
        expected = (min if position == "left" else max)(xs, key=xs.get)
        assert meta["target"]["ann_id"] == expected, (key, position, xs)
        assert meta["target"]["centroid"][0] == pytest.approx(xs[expected], abs=0.01)
        checked += 1
    assert checked > 0


def test_no_target_and_multi_target_refs_skipped(built):
    _, shards, out, _ = built
    refs = [m for index in sorted((shards / "grefcoco").rglob("shardindex.json")) for _, m, _ in read_samples(index)]
    no_target = [m for m in refs if m["no_target"]]
    multi = [m for m in refs if len(m["ann_ids"]) > 1]
    assert no_target and multi
    plan = json.loads((out / "plan.json").read_text())
    assert plan["shard_input"]["skipped"]["no_target"] == len(no_target)
    assert plan["shard_input"]["skipped"]["multi_target"] == len(multi)
    objects = sum(len(json.loads(p.read_text())["annotations"])
                  for p in (out / "input_scenes" / "annotations").glob("instances_*.json"))
    assert objects == plan["shard_input"]["objects"] == len(_converted_masks(shards))
    assert plan["shard_input"]["duplicate_refs"] > 0  # refcoco and grefcoco refer to the same annotations


def test_splits_filter_and_images_rejected(converted, tmp_path):
    _, shards = converted
    cfg = SyntheticConfig(scenarios=SCENARIOS, leakage_guard=False)
    plan = plan_build(cfg, BuildInputs(input=str(shards / "refcoco"), splits=["val"]), tmp_path / "a")
    assert [Path(s).stem for s in plan["sources"]] == ["instances_val"]
    assert plan["shard_input"]["skipped"]["other_split"] > 0
    with pytest.raises(ValueError, match="images"):
        plan_build(cfg, BuildInputs(input=str(shards), images="/x"), tmp_path / "b")
