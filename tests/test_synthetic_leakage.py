"""Leakage guard: on by default, variants of evaluation images (crops, padding, flips) and COCO image ids
are caught, MagicBrush test is read in its released layout, unrelated images pass."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from PIL import Image, ImageOps

from pipeline.records import Reject
from pipeline.synthetic.build import BuildInputs, plan_build
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.leakage import LeakageGuard, load_eval_hashes
from pipeline.synthetic.scene import load_index, resolve_inputs


@pytest.fixture(scope="module")
def samples(samples_seed0):
    return samples_seed0


def _records(samples):
    splits, _ = resolve_inputs(samples.root)
    return [r for s in splits for r in load_index(str(s.annotations), str(s.images), s.split, ("mirror",), None).records()]


def _attacks(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=80)
    return {
        "jpeg": Image.open(jpeg), "mirrored": ImageOps.mirror(image),
        "7 % cropped left": image.crop((int(w * 0.07), 0, w, h)),
        "5 % cropped all sides": image.crop((int(w * 0.05), int(h * 0.05), int(w * 0.95), int(h * 0.95))),
        "8 % cropped bottom right": image.crop((0, 0, int(w * 0.92), int(h * 0.92))),
        "10 % cropped top": image.crop((0, int(h * 0.1), w, h)),
        "padded black": ImageOps.expand(image, border=int(w * 0.1), fill=(0, 0, 0)),
        "letterboxed white": ImageOps.expand(image, border=(0, int(h * 0.15)), fill=(255, 255, 255)),
        "mirrored and 6 % cropped": ImageOps.mirror(image.crop((int(w * 0.06), 0, w, h))),
    }


def test_crops_padding_and_flips_of_evaluation_images_are_caught(samples, tmp_path):
    cfg = SyntheticConfig()
    guard = LeakageGuard(load_eval_hashes((str(samples.reason_edit),)), cfg.phash_max_distance)
    template = _records(samples)[0]
    evals = sorted(p for p in samples.reason_edit.rglob("*.png") if not p.stem.endswith("_mask"))[:4]
    n = 0
    for e in evals:
        for name, attacked in _attacks(Image.open(e).convert("RGB")).items():
            path = tmp_path / f"{n}.png"
            attacked.convert("RGB").save(path)
            record = replace(template, image_id=-1, file_name=path.name, path=path)
            verdict = guard.check(record)
            assert isinstance(verdict, Reject) and verdict.reason == "eval_overlap", (e.name, name)
            n += 1
    # no false alarm: none of the (unrelated) COCO sample scenes is taken for an evaluation image
    assert [r.location for r in _records(samples) if guard.check(r) is not None] == []


def test_magicbrush_test_layout_and_coco_image_ids(samples, tmp_path):
    records = _records(samples)
    leaked, renamed = records[3], records[5]
    # MagicBrush test as released: edit_sessions.json + images/<img_id>/<img_id>-input.png; img_id = COCO id
    root = tmp_path / "MagicBrush" / "test"
    sessions = {}
    for record, img_id in ((leaked, 999_999_001), (renamed, renamed.image_id)):
        folder = root / "images" / str(img_id)
        folder.mkdir(parents=True)
        image = ImageOps.exif_transpose(Image.open(leaked.path if record is leaked else records[0].path)).convert("RGB")
        image.save(folder / f"{img_id}-input.png")
        sessions[str(img_id)] = [{"input": f"{img_id}-input.png", "mask": f"{img_id}-mask1.png",
                                  "output": f"{img_id}-output1.png", "instruction": "make it red"}]
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    hashes = load_eval_hashes((str(root.parent),))  # the archive's top directory works too
    assert renamed.image_id in hashes.image_ids
    guard = LeakageGuard(hashes, SyntheticConfig().phash_max_distance)
    verdicts = {r.location: guard.check(r) for r in records}
    assert verdicts[leaked.location].reason == "eval_overlap"  # same pixels, other id
    assert verdicts[renamed.location].reason == "eval_image_id"  # same id, other pixels
    assert verdicts[records[0].location].reason == "eval_overlap"  # whose pixels the renamed session shows
    assert sum(v is not None for v in verdicts.values()) == 3


def test_guard_is_on_by_default(samples, tmp_path):
    with pytest.raises(ValueError, match="eval_sets: empty while leakage_guard is on"):
        plan_build(SyntheticConfig(), BuildInputs(input=str(samples.root)), tmp_path / "a")
    plan = plan_build(SyntheticConfig(scenarios={"reasoning": 2}, leakage_guard=False),
                      BuildInputs(input=str(samples.root)), tmp_path / "b")
    assert plan["entries"]
