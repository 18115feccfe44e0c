"""The synthetic build end to end with the CPU editor: shards, background, determinism, resume, drops,
export, contact sheet, data card and CLI."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.records import Reject
from pipeline.synthetic.build import BuildInputs, build, plan_build
from pipeline.synthetic.config import SCENARIOS, SyntheticConfig
from pipeline.synthetic.export import read_samples
from synthetic_fixtures import make_drop_scenes, make_eval_set, make_scenes

ALL = {s: 10 for s in SCENARIOS}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def built(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    cfg = SyntheticConfig(scenarios=ALL, shard_size=3, leakage_guard=False)
    return cfg, out, build(cfg, BuildInputs(input=str(scenes)), out)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_pairs_written_with_exact_background_and_real_edits(built):
    cfg, out, result = built
    from pipeline.verify import verify_dataset

    report = verify_dataset(out / "shardindex.json", check_schema=True)
    assert report.ok, report.problems
    samples = list(read_samples(out))
    assert len(samples) == result["kept"] >= 6
    assert {m["scenario"] for _, m, _ in samples} == set(SCENARIOS)
    for key, meta, files in samples:
        src, tgt, mask = _decode(files["src.png"]), _decode(files["tgt.png"]), _decode(files["mask.png"]) > 127
        assert src.shape == tgt.shape and mask.shape == src.shape[:2]
        assert np.array_equal(src[~mask], tgt[~mask]), key  # background bit-exact
        assert not np.array_equal(src[mask], tgt[mask]), key
        assert meta["instruction"] == meta["instructions"][0] and len(meta["instructions"]) >= 2
        assert meta["mask_source"] == "annotation" and meta["models"]["editor"] == "lab-opencv-ns"
        if meta["operation"] == "remove":  # verified: the fill looks like its surroundings
            assert meta["scores"]["ring_de_p90"] <= cfg.remove_ring_max_de
        else:
            assert meta["scores"]["colour_named"] == meta["new_colour"]
        assert meta["seeds"]["build"] == cfg.seed and isinstance(meta["seeds"]["pair"], int)
        assert meta["scores"]["background_max_diff"] == 0
        assert meta["scores"]["edit_strength"] >= cfg.min_edit_strength
        assert cfg.mask_min_area <= meta["scores"]["mask_area"] <= cfg.mask_max_area


def test_manifest_yields_export_sheet_and_card(built):
    cfg, out, result = built
    index = json.loads((out / "shardindex.json").read_text())
    stages = [row["stage"] for row in index["yields"]]
    assert stages == ["leakage_guard", "scene_analysis", "scenario_selection", "instructions", "paraphrase", "load",
                      "masks", "mask_area", "editor", "verify", "edit_strength", "background", "clip_direction", "encode"]
    rows = {row["stage"]: row for row in index["yields"]}
    for row in index["yields"]:
        assert row["dropped"] == sum(row["dropped_by_reason"].values())
        if not row["fan_out"]:  # one in, one out or one drop
            assert row["in"] == row["out"] + row["dropped"], row
            assert row["yield"] == round(row["out"] / row["in"], 4)
    # every planned job enters the shard stages; every scene-level drop is counted where it happened
    assert rows["paraphrase"]["in"] == rows["instructions"]["out"]
    assert rows["encode"]["out"] == index["counts"]["kept"]
    assert rows["scenario_selection"]["fan_out"] and rows["scenario_selection"]["yield"] is None
    all_dropped = sum(row["dropped"] for row in index["yields"])
    assert all_dropped == index["counts"]["rejected"]
    assert sum(index["kept_by_scenario"].values()) == index["counts"]["kept"]
    assert index["counts"]["rejected_by_reason"]  # the fixture has ambiguous scenes

    # failed candidates are labelled negatives in their own shards, one per failed candidate
    negatives = list(read_samples(out / "negatives"))
    assert len(negatives) == result["negatives"] >= 1
    for key, meta, files in negatives:
        assert meta["negative"] is True and meta["reason"] in {"fill_unlike_surroundings", "fill_like_object"}
        src, tgt, mask = _decode(files["src.png"]), _decode(files["tgt.png"]), _decode(files["mask.png"]) > 127
        assert np.array_equal(src[~mask], tgt[~mask])
        if "ring_de_p90" in meta["scores"] and meta["reason"] == "fill_unlike_surroundings":
            assert meta["scores"]["ring_de_p90"] > cfg.remove_ring_max_de

    export = json.loads(Path(result["smartedit_json"]).read_text())
    assert sorted(export) == [f"{i:04d}" for i in range(result["kept"])]
    for entry in export.values():
        assert set(entry) == {"origin_img_path", "target_img_path", "instruction"}
        assert isinstance(entry["instruction"], list) and entry["instruction"]
        for key in ("origin_img_path", "target_img_path"):
            assert (Path(result["smartedit_json"]).parent / entry[key]).is_file()

    sheet = Image.open(result["contact_sheet"])
    assert sheet.height > 160 * min(result["kept"], 16)
    card = Path(result["data_card"]).read_text()
    for needle in ("## Yield per stage", "| left_right | 1-Left-Right |", "min_edit_strength", "ambiguous_position",
                   "| stage | in | out | dropped | yield | top drop reasons |", "fan-out ("):
        assert needle in card
    assert "212.5 %" not in card and " % |" in card


def test_same_seed_gives_identical_shards(built, scenes, tmp_path):
    cfg, out, _ = built
    build(cfg, BuildInputs(input=str(scenes)), tmp_path / "again")
    a = json.loads((out / "shardindex.json").read_text())["shardlist"]
    b = json.loads((tmp_path / "again" / "shardindex.json").read_text())["shardlist"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]
    other = build(cfg.model_copy(update={"seed": 1}), BuildInputs(input=str(scenes)), tmp_path / "seed1")
    c = json.loads(Path(other["manifest"]).read_text())["shardlist"]
    assert [s["sha256"] for s in a] != [s["sha256"] for s in c]


def test_resume_after_kill_finishes_with_the_same_bytes(built, scenes, tmp_path, monkeypatch):
    cfg, out, _ = built
    from pipeline.synthetic.editors import LabEditor

    real_edit, calls = LabEditor.edit, {"n": 0}

    def dying_edit(self, pairs):
        calls["n"] += 1
        if calls["n"] == 4:  # killed in the middle of a shard
            raise KeyboardInterrupt
        return real_edit(self, pairs)

    monkeypatch.setattr(LabEditor, "edit", dying_edit)
    target = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build(cfg, BuildInputs(input=str(scenes)), target)
    finished = sorted(target.glob("*.stats.json"))
    # the interrupted shard has no final-named tar and no marker (the writer deletes its unique temporary)
    assert finished and len(list(target.glob("*.tar"))) == len(finished) and not (target / "shardindex.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    monkeypatch.setattr(LabEditor, "edit", real_edit)
    build(cfg, BuildInputs(input=str(scenes)), target)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # finished shards not redone
    a = json.loads((out / "shardindex.json").read_text())["shardlist"]
    b = json.loads((target / "shardindex.json").read_text())["shardlist"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]
    assert not list(target.glob("*.tmp"))


def test_rerun_with_other_parameters_is_refused(built, scenes):
    cfg, out, _ = built
    with pytest.raises(ValueError, match="other parameters"):
        plan_build(cfg.model_copy(update={"size_ratio": 3.0}), BuildInputs(input=str(scenes)), out)


def _reasons(out: Path) -> set[str]:
    return {json.loads(line)["reason"] for line in (out / "rejects.jsonl").read_text().splitlines()}


def test_every_drop_reason_has_a_crafted_case(tmp_path):
    root = make_drop_scenes(tmp_path / "drops")
    inputs = BuildInputs(input=str(root))
    cfg = SyntheticConfig(scenarios=ALL, eval_sets=[str(root / "eval")], phash_max_distance=0)
    build(cfg, inputs, tmp_path / "a")
    assert _reasons(tmp_path / "a") >= {
        "ambiguous_position", "size_ratio_too_small", "colours_not_distinct", "reasoning_ambiguous",
        "mask_too_small", "mask_too_large", "no_object_in_mirror", "ambiguous_mirror", "eval_overlap",
        "image_missing", "size_mismatch", "no_objects",
    }
    rejects = [json.loads(x) for x in (tmp_path / "a" / "rejects.jsonl").read_text().splitlines()]
    assert {r["location"] for r in rejects if r["reason"] == "eval_overlap"} == {"val2017/eval_copy.png"}

    build(cfg.model_copy(update={"colour_min_share": 1.01}), inputs, tmp_path / "b")
    assert "colour_uncertain" in _reasons(tmp_path / "b")
    build(cfg.model_copy(update={"operations": ["replace"]}), inputs, tmp_path / "c")
    assert "replace_needs_generator" in _reasons(tmp_path / "c")
    build(cfg.model_copy(update={"min_edit_strength": 1e6}), inputs, tmp_path / "d")
    assert "edit_too_weak" in _reasons(tmp_path / "d")


def test_background_change_is_caught(built):
    """Paste-back makes this impossible in the build; the filter must still catch an editor that leaks."""
    cfg, out, _ = built
    from pipeline.synthetic.filters import BackgroundFilter
    from pipeline.synthetic.instructions import EditJob
    from pipeline.synthetic.pair import EditPair

    plan = json.loads((out / "plan.json").read_text())
    job = EditJob.from_json(next(e["job"] for e in plan["entries"] if "job" in e))
    src = np.zeros((job.height, job.width, 3), np.uint8)
    mask = np.zeros(src.shape[:2], bool)
    mask[10:30, 10:30] = True
    tgt = src.copy()
    tgt[mask] = 200
    tgt[0, 0] = 1  # one background pixel off by one
    pair = EditPair(job, src, mask, mask=mask, edit_mask=mask, target=tgt)
    (result,) = BackgroundFilter(cfg)([pair])
    assert isinstance(result, Reject) and result.reason == "background_changed"
    pair.target[0, 0] = 0
    (result,) = BackgroundFilter(cfg)([pair])
    assert result is pair


def test_cli_build_and_sheet(scenes, tmp_path, capsys):
    from smartedit_cli.main import main

    out = tmp_path / "cli"
    assert main(["build-synthetic", "--input", str(scenes), "--out", str(out), "--scenarios", "all=1,reasoning=2",
                 "--eval-set", str(make_eval_set(tmp_path / "eval")),
                 "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept"] >= 1 and Path(summary["manifest"]).exists()
    shard = sorted(out.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        n_in_shard = len({Path(m.name).name.split(".")[0] for m in tar})
    assert main(["shards", "sheet", str(shard), "-o", str(tmp_path / "sheet.png"), "-n", "4"]) == 0
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.height == 4 + min(4, n_in_shard) * (160 + 4)


def test_leakage_guard_reads_magicbrush_parquet(scenes, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.synthetic.leakage import LeakageGuard, load_eval_hashes
    from pipeline.synthetic.scene import load_index, resolve_inputs

    (split,), scenes_json = resolve_inputs(scenes)
    records = load_index(str(split.annotations), str(split.images), split.split, ("mirror",), None).records()
    leaked = records[2]
    # MagicBrush test parquet: image structs {bytes, path}; the leaked image re-encoded as JPEG
    buf = io.BytesIO()
    Image.open(leaked.path).save(buf, "JPEG", quality=90)
    table = pa.table({"img_id": ["999001"], "source_img": [{"bytes": buf.getvalue(), "path": "x.jpg"}],
                      "instruction": ["make it red"]})
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    hashes = load_eval_hashes((str(tmp_path / "test-00000-of-00001.parquet"),))
    assert {n.split(" [")[0] for n in hashes.names} == {"test-00000-of-00001.parquet:0:source_img"}
    assert hashes.image_ids == {999001}
    out = list(LeakageGuard(hashes, max_distance=2)(records))
    dropped = [r for r in out if isinstance(r, Reject)]
    assert [(r.location, r.reason) for r in dropped] == [(leaked.location, "eval_overlap")]
    assert len(out) == len(records)
