"""The `smartedit train`, `smartedit evaluate` and `smartedit convert --workers/--max-pixels` handlers, run for
real on tiny models and generated data (not only their argument parsing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from smartedit_cli.main import main

torch.set_num_threads(2)


def test_train_handler_runs_a_stage_and_writes_checkpoint_and_pipeline(tmp_path, capsys):
    from test_train_data import write_stage2_datasets

    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards")]
    out = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--stage", "2", "--steps", "2", "--manifests", str(tmp_path / "shards"),
               "--output-dir", str(out), "--allow-missing-sources"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary.get("start_step", 0) == 0
    final = summary["final"]
    assert {"loss", "lm_loss", "diffusion_loss", "lr"} <= set(final)
    assert all(math.isfinite(v) for v in final.values()) and final["loss"] > 0 and final["lm_loss"] > 0
    assert final["loss"] == pytest.approx(final["lm_loss"] + final["diffusion_loss"], rel=1e-4)  # 1 : 1 weights
    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == "step-00000002" and ckpt.parent.parent == out
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert (Path(summary["pipeline_dir"]) / "model_index.json").is_file()
    assert len(manifests) == 6


def test_evaluate_handler_writes_reports(tmp_path, capsys):
    from evaluation_fixtures import make_reason_edit

    from model.config import tiny_config
    from model.pipeline import SmartEditPipeline
    from model.smartedit import build_smartedit

    pipe_dir = tmp_path / "pipe"
    SmartEditPipeline(build_smartedit(tiny_config(), for_inference=True)).save_pretrained(pipe_dir)
    bench = make_reason_edit(tmp_path / "bench", per_category=1, size=64)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(pipe_dir), "--benchmark", str(bench), "--out", str(out), "--seeds", "3",
               "--num-inference-steps", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text(encoding="utf-8") in printed
    assert (out / "judging.html").is_file()
    assert len(report["records"]) == 6
    assert report["config"]["editor_kwargs"] == {"num_inference_steps": 1}
    assert all(r["psnr"] is not None for r in report["records"])


def test_convert_workers_and_max_pixels_reach_the_conversion(tmp_path, capsys, monkeypatch):
    import pipeline.sources as sources
    from convert_fixtures import build_sources

    fx = build_sources(tmp_path / "src")
    calls = []
    real = sources.convert_source
    monkeypatch.setattr(sources, "convert_source", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    base = ["convert", "llava-instruct", "--root", str(fx.roots["llava-instruct"]),
            "--images", fx.options["llava-instruct"]["images"], "--shard-size", "2"]
    assert main(base + ["--out", str(tmp_path / "w2"), "--workers", "2", "--max-pixels", str(40 * 30 - 1)]) == 0
    assert calls[-1]["workers"] == 2 and calls[-1]["max_pixels"] == 40 * 30 - 1
    printed = capsys.readouterr().out
    assert "llava-instruct/train: 6 records → 0 samples" in printed and "image_too_large 3" in printed
    index = json.loads((tmp_path / "w2" / "llava-instruct" / "train" / "shardindex.json").read_text())
    assert index["counts"]["rejected_by_reason"]["image_too_large"] == 3
    # without the limit the same images are kept, and one worker writes the same bytes as two
    assert main(base + ["--out", str(tmp_path / "w1"), "--workers", "1"]) == 0
    assert calls[-1]["workers"] == 1 and "max_pixels" not in calls[-1]
    assert main(base + ["--out", str(tmp_path / "w2b"), "--workers", "2"]) == 0
    one = json.loads((tmp_path / "w1" / "llava-instruct" / "train" / "shardindex.json").read_text())
    two = json.loads((tmp_path / "w2b" / "llava-instruct" / "train" / "shardindex.json").read_text())
    assert one["counts"]["kept"] == 3 and one["shardlist"] == two["shardlist"]
    with pytest.raises(SystemExit):
        main(base + ["--out", str(tmp_path / "x"), "--workers", "two"])
