"""The evaluation driver end to end (deterministic editor, tiny fixture), report JSON/markdown with the paper's
rows, grids, Ins-align aggregation and the CLI handlers."""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import pytest
import torch
import yaml
from evaluation_fixtures import brighten_editor, make_reason_edit, make_tiny_clip, make_tiny_lpips
from PIL import Image

from model.evaluation.evaluate import evaluate
from model.evaluation.judging import JUDGEMENTS_FORMAT, ins_align
from model.evaluation.report import PAPER_TABLE, EvaluationReport, load_paper_table

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_reason_edit(tmp_path_factory.mktemp("bench"), per_category=2, size=64)


@pytest.fixture(scope="module")
def official_run(bench, tmp_path_factory):
    weights = tmp_path_factory.mktemp("weights")
    clip_dir = make_tiny_clip(weights / "clip")
    lpips_dir = make_tiny_lpips(weights / "lpips", "squeeze")
    out = tmp_path_factory.mktemp("official")
    report = evaluate(brighten_editor, bench, out, protocol="official", seeds=(0, 1), clip_dir=clip_dir, lpips_dir=lpips_dir)
    return report, out


@pytest.fixture(scope="module")
def corrected_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("corrected")
    return evaluate(brighten_editor, bench, out, protocol="corrected", seeds=(0, 1)), out


def test_paper_table_is_loaded_from_the_data_file():
    raw = yaml.safe_load(PAPER_TABLE.read_text())
    table = load_paper_table()
    assert [r.method for r in table.rows] == [r["method"] for r in raw["rows"]]
    assert table.rows[3].reasoning.ins_align == raw["rows"][3]["reasoning"]["ins_align"]


def test_bad_paper_table_is_rejected(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("source: x\nprotocol: official\nrows: [{method: A, understanding: {psnr: 1}}]\n")
    with pytest.raises(ValueError, match="t.yaml: not a valid paper table"):
        load_paper_table(bad)


def test_official_run_scores_every_category_and_flags_reasoning(official_run):
    report, out = official_run
    assert set(report.categories) == {"1-Left-Right", "2-Relative-Size", "3-Mirror", "4-Color", "5-Multiple-Objects", "6-Reasoning"}
    assert set(report.groups) == {"understanding", "reasoning"}
    assert report.groups["reasoning"].n == 2 * 2  # 2 items × 2 seeds
    assert report.groups["reasoning"].psnr is not None and report.groups["reasoning"].lpips is not None
    assert any("never scores 6-Reasoning" in f for f in report.flags)
    for r in report.records:
        assert r.clip is not None and r.lpips is not None and r.psnr is not None
        assert (out / r.output).is_file() and (out / r.input).is_file()


def test_aggregates_are_means_of_the_records(official_run):
    report, out = official_run
    data = json.loads((out / "report.json").read_text())
    understanding = [r for r in data["records"] if r["group"] == "understanding"]
    for metric in ("psnr", "ssim", "lpips", "clip"):
        expected = statistics.fmean(r[metric] for r in understanding)
        assert data["groups"]["understanding"][metric] == pytest.approx(expected)
    mirror = [r["psnr"] for r in data["records"] if r["category"] == "3-Mirror"]
    assert data["categories"]["3-Mirror"]["psnr"] == pytest.approx(statistics.fmean(mirror))
    assert set(data["seed_std"]) == {"understanding", "reasoning"}
    assert EvaluationReport.read_json(out / "report.json").groups["reasoning"].ssim == pytest.approx(report.groups["reasoning"].ssim)


def test_markdown_puts_the_paper_rows_beside_ours(official_run):
    report, out = official_run
    md = (out / "report.md").read_text()
    for row in load_paper_table().rows:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row.method} (paper)"))
        assert f"{row.understanding.psnr:.3f}" in line and f"{row.reasoning.ins_align:.3f}" in line
    ours = next(ln for ln in md.splitlines() if ln.startswith("| **ours"))
    assert "**official**" in ours and f"{report.groups['understanding'].psnr:.3f}" in ours
    assert "n/a" in ours  # Ins-align is not judged yet
    assert "protocol `official`" in md and "never scores 6-Reasoning" in md


def test_outputs_are_deterministic_per_seed(official_run, corrected_run):
    (_, out_a), (_, out_b) = official_run, corrected_run
    same = np.asarray(Image.open(out_a / "outputs/4-Color/001_s0.png"))
    assert np.array_equal(same, np.asarray(Image.open(out_b / "outputs/4-Color/001_s0.png")))
    assert not np.array_equal(same, np.asarray(Image.open(out_a / "outputs/4-Color/001_s1.png")))


def test_corrected_report_differs_from_official_and_has_na_columns(official_run, corrected_run):
    (official, _), (corrected, out) = official_run, corrected_run
    by_key = {(r.key, r.seed): r for r in official.records}
    for r in corrected.records:
        assert r.lpips is None and r.clip is None  # no weight directories given
        assert by_key[(r.key, r.seed)].psnr > r.psnr  # the official protocol inflates PSNR
    assert corrected.groups["understanding"].missing == {"lpips": 20, "clip": 20}
    md = (out / "report.md").read_text()
    assert "**corrected**" in md and not any("never scores" in f for f in corrected.flags)
    ours = next(ln for ln in md.splitlines() if ln.startswith("| **ours"))
    assert "| **corrected** (not comparable) |" in ours


def test_category_grids(official_run):
    report, out = official_run
    grids = sorted((out / "grids").glob("grid_*.png"))
    assert len(grids) == 6
    with Image.open(out / "grids" / "grid_6-Reasoning.png") as im:
        assert im.size == (128 * 5, 128 * 2)  # input | output | mask | instruction (2 tiles wide), 2 items
        # the output tile of the first row is the saved seed-0 output, resized
        tile = np.asarray(im.crop((128, 0, 256, 128)).convert("RGB"), dtype=np.int16)
    expected = np.asarray(Image.open(out / "outputs/6-Reasoning/001_s0.png").resize((128, 128), Image.Resampling.BICUBIC), dtype=np.int16)
    assert np.abs(tile - expected).max() <= 1


def _judgements(judge: str, verdicts: dict[tuple[str, int], bool], groups: dict[str, tuple[str, str]],
                page_id: str = "p") -> dict:
    return {
        "format": JUDGEMENTS_FORMAT, "page_id": page_id, "judge": judge, "exported_at": "2024-01-01T00:00:00Z",
        "total": len(verdicts),
        "judgements": [{"key": k, "seed": s, "category": groups[k][0], "group": groups[k][1], "follows": v}
                       for (k, s), v in verdicts.items()],
        "unjudged": [],
    }


def test_ins_align_averages_judges_per_pair_then_pairs_per_group():
    where = {"1-Left-Right/001": ("1-Left-Right", "understanding"), "4-Color/002": ("4-Color", "understanding"),
             "6-Reasoning/001": ("6-Reasoning", "reasoning")}
    alice = {("1-Left-Right/001", 0): True, ("4-Color/002", 0): False, ("6-Reasoning/001", 0): True}
    bob = {("1-Left-Right/001", 0): False, ("4-Color/002", 0): False, ("6-Reasoning/001", 0): True,
           ("6-Reasoning/001", 1): False}
    result = ins_align([_judgements("alice", alice, where), _judgements("bob", bob, where)])
    # understanding pairs: (True+False)/2 = 0.5 and 0 → 0.25; reasoning pairs: seed 0 → 1.0, seed 1 → 0.0
    assert result.groups == {"reasoning": pytest.approx(0.5), "understanding": pytest.approx(0.25)}
    assert result.categories["1-Left-Right"] == pytest.approx(0.5) and result.categories["4-Color"] == 0.0
    assert result.judged == {"reasoning": 2, "understanding": 2} and result.judgements == 7
    assert result.judges == ["alice", "bob"]


def test_ins_align_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="x.json: field 'format'"):
        ins_align([path])
    path.write_text(json.dumps({"format": JUDGEMENTS_FORMAT, "judgements": [{"key": "a", "seed": 0, "category": "c",
                                                                              "group": "g", "follows": "yes"}]}))
    with pytest.raises(ValueError, match=r"judgements\[0\].follows"):
        ins_align([path])


def test_ins_align_cli_updates_the_report(official_run, tmp_path, capsys):
    from smartedit_cli import evaluate as cli

    report, out = official_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    report.write_json(run_dir / "report.json")
    verdicts = {(r.key, r.seed): r.category != "3-Mirror" for r in report.records}
    where = {r.key: (r.category, r.group) for r in report.records}
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    # an export from another page (another model, benchmark or protocol) is refused
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(_judgements("mallory", verdicts, where, page_id="other-model-corrected-0123")))
    args = parser.parse_args(["ins-align", str(foreign), "--report", str(run_dir / "report.json")])
    with pytest.raises(ValueError, match=r"foreign.json: exported from judging page 'other-model-corrected-0123'"):
        args.func(args)

    judgements = tmp_path / "j.json"
    del verdicts[report.records[0].key, report.records[0].seed]  # one pair left unjudged: coverage 23 of 24
    judgements.write_text(json.dumps(_judgements("carol", verdicts, where, page_id=report.page_id)))
    args = parser.parse_args(["ins-align", str(judgements), "--report", str(run_dir / "report.json"),
                              "--out", str(tmp_path / "ins.json")])
    assert args.func(args) == 0
    expected_understanding = 15 / 19  # 3-Mirror (4 of the 19 judged understanding pairs) does not follow
    updated = EvaluationReport.read_json(run_dir / "report.json")
    assert updated.groups["understanding"].ins_align == pytest.approx(expected_understanding)
    assert updated.groups["reasoning"].ins_align == pytest.approx(1.0)
    assert updated.categories["3-Mirror"].ins_align == 0.0
    ours = next(ln for ln in (run_dir / "report.md").read_text().splitlines() if ln.startswith("| **ours"))
    assert f"{expected_understanding:.3f}" in ours
    assert json.loads((tmp_path / "ins.json").read_text())["groups"]["understanding"] == pytest.approx(expected_understanding)
    assert "understanding" in capsys.readouterr().out
    assert updated.ins_align_coverage == {"judged": 23, "total": 24}
    assert "Ins-align coverage: 23 of 24 (item, seed) pairs judged" in (run_dir / "report.md").read_text()


def test_evaluate_cli_parses_its_options():
    from smartedit_cli import evaluate as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", "--model", "m", "--benchmark", "b", "--out", "o", "--protocol", "official",
                              "--seeds", "0", "3", "--clip", "c", "--lpips", "l", "--dino", "d", "--vlm-judge", "v"])
    assert (args.protocol, args.seeds, args.clip, args.lpips) == ("official", [0, 3], "c", "l")
    assert (args.dino, args.vlm_judge) == ("d", "v")
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--model", "m", "--benchmark", "b", "--out", "o", "--protocol", "paper"])


# ---------------------------------------------------------------- PSNR beside its capped mean, settings, page ids
def test_pooled_error_psnr_median_and_capped_count_beside_the_capped_mean():
    import math

    from model.evaluation.report import ItemRecord, aggregate

    # seven items, one with an identical background (PSNR capped at 100): the mean jumps, pooled/median do not
    mses = [10 ** (-p / 10) for p in (28.0, 29.5, 30.0, 31.0, 30.5, 32.0)] + [0.0]
    records = [ItemRecord(key=f"k{i}", category="c", group="understanding", seed=0, instruction="i", clip_text=None,
                          output="o", mse=m, psnr=100.0 if m == 0 else 10 * math.log10(1 / m),
                          notes=["psnr capped at 100 dB (identical background)"] if m == 0 else [])
               for i, m in enumerate(mses)]
    agg = aggregate(records)
    psnrs = np.array([r.psnr for r in records])
    assert agg.psnr == pytest.approx(psnrs.mean()) and agg.psnr > 40
    assert agg.psnr_pooled == pytest.approx(10 * np.log10(1 / np.mean(mses)))  # numpy, independent
    assert agg.psnr_median == pytest.approx(float(np.median(psnrs))) == 30.5
    assert agg.psnr_capped == 1 and agg.psnr_pooled < 32


def test_report_names_settings_metric_models_capped_count_and_the_comparability_note(bench, tmp_path_factory):
    from evaluation_fixtures import make_tiny_lpips

    lpips_dir = make_tiny_lpips(tmp_path_factory.mktemp("w") / "lpips", "alex")
    out = tmp_path_factory.mktemp("identity")
    report = evaluate("identity", bench, out, lpips_dir=lpips_dir, judging_page=False, grids=False)
    md = (out / "report.md").read_text()
    assert "corrected protocol: these rows are NOT comparable with the paper's Table 1" in md
    assert "- PSNR: 12 of 12 values capped at 100 dB" in md  # identity: every background identical
    assert "- Ins-align coverage: 0 of 12 (item, seed) pairs judged" in md
    assert f"| benchmark_hash | `{report.settings['benchmark_hash']}` |" in md
    assert f"alex:{lpips_dir}@" in md  # the LPIPS backbone and its weights directory
    # instruction-following columns sit in a table right after Table 1; identity changes nothing
    table = md[md.index("## Instruction following"):md.index("## Per category")]
    assert table.count("| 0.000 |") >= 2 and "| understanding | 10 | 100.000 | inf | 100.000 | 10 |" in table
    assert all(r.ssim == 1.0 and r.lpips == 0.0 and r.fg_change == 0.0 for r in report.records)
    again = EvaluationReport.read_json(out / "report.json")
    assert again.groups["understanding"].psnr_pooled == float("inf") and again.settings == report.settings


def test_benchmark_hash_follows_content_and_page_ids_differ_per_model(bench, tmp_path):
    import shutil

    from model.evaluation.evaluate import judging_page_id
    from model.evaluation.reason_edit import benchmark_hash, read_benchmark

    copy = tmp_path / "copy"
    shutil.copytree(bench, copy)
    assert benchmark_hash(read_benchmark(copy)) == benchmark_hash(read_benchmark(bench))  # content, not path
    mask = next(copy.glob("4-Color/*_mask.jpg"))
    mask.write_bytes(mask.read_bytes() + b"\0")
    assert benchmark_hash(read_benchmark(copy)) != benchmark_hash(read_benchmark(bench))
    # two models whose directories are both called "pipeline" get different pages (and localStorage slots)
    a = judging_page_id("runs/a/pipeline@1111", "h", "corrected")
    b = judging_page_id("runs/b/pipeline@2222", "h", "corrected")
    assert a != b and a.startswith("pipeline-corrected-") and judging_page_id("runs/a/pipeline@1111", "h", "official") != a


def test_judging_page_uses_jpeg_thumbnails(tmp_path):
    import base64
    import io
    import re

    from evaluation_fixtures import pattern_image

    from model.evaluation.judging import JudgingEntry, write_judging_page

    rng = np.random.default_rng(0)
    entries = []
    for i in range(6):
        src, out = tmp_path / f"in{i}.png", tmp_path / f"out{i}.png"
        Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(src)  # incompressible 512-px PNG
        pattern_image(i, 512).save(out)
        entries.append(JudgingEntry(f"c/{i}", 0, "c", "understanding", "do it", src, out))
    page = write_judging_page(entries, tmp_path / "judging.html", page_id="m-corrected-0123456789abcdef").read_text()
    uris = re.findall(r'"data:image/(\w+);base64,([^"]+)"', page)
    assert len(uris) == 12 and {fmt for fmt, _ in uris} == {"jpeg"}
    with Image.open(io.BytesIO(base64.b64decode(uris[0][1]))) as thumb:
        assert max(thumb.size) == 256
    assert '"ins-align:" + PAGE_ID' in page
    assert len(page) < 6 * 2 * 60_000  # a 512-px noise PNG is ~790 KB; its thumbnail a few tens of KB
