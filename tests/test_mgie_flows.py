"""MGIE through the project's flows: evaluate on Reason-Edit, the SmartEdit-vs-MGIE comparison report, and the
scheduled retraining chain with model=mgie (tiny preset, sample data, the session's Prefect test server)."""

from __future__ import annotations

import json

import pytest
import torch

from flows.demo import mgie_parameters, sample_sources


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from pipeline.samples import make_samples

    out = tmp_path_factory.mktemp("mgie-samples")
    make_samples(out, seed=0)
    return out


def test_evaluate_both_models_and_compare(prefect_harness, samples, tmp_path):
    from flows.evaluate import evaluate_pipeline
    from model.config import tiny_config
    from model.mgie.comparison import write_comparison
    from model.mgie.config import tiny_mgie_config
    from model.mgie.model import build_mgie
    from model.mgie.pipeline import MGIEPipeline
    from model.pipeline import SmartEditPipeline
    from model.smartedit import build_smartedit

    SmartEditPipeline(build_smartedit(tiny_config()).eval()).save_pretrained(tmp_path / "smartedit")
    MGIEPipeline(build_mgie(tiny_mgie_config()).eval()).save_pretrained(tmp_path / "mgie")
    results = {}
    for name in ("smartedit", "mgie"):
        results[name] = evaluate_pipeline(pipeline_dir=str(tmp_path / name), benchmark=str(samples / "reason_edit"),
                                          out_dir=str(tmp_path / f"eval-{name}"), num_inference_steps=2)
    assert set(results["mgie"]["categories"]) == set(results["smartedit"]["categories"])
    assert results["mgie"]["groups"]["understanding"]["psnr"] is not None

    out = write_comparison({"SmartEdit": tmp_path / "eval-smartedit" / "report.json",
                            "MGIE": tmp_path / "eval-mgie" / "report.json"}, tmp_path / "comparison.md")
    text = out.read_text()
    assert "| **MGIE (ours)** | `mgie` |" in text and "| **SmartEdit (ours)** | `smartedit` |" in text
    assert "| SmartEdit-7B (paper) | SmartEdit Table 1 | 22.049 |" in text
    assert "| MGIE-7B (paper) | not reported | missing |" in text and "publishes no Reason-Edit numbers" in text
    psnr = results["mgie"]["groups"]["understanding"]["psnr"]
    assert f"{psnr:.3f}" in text
    for category, agg in results["mgie"]["categories"].items():
        assert f"| {category} | MGIE | {agg['n']} |" in text


def test_retrain_flow_trains_and_registers_mgie(prefect_harness, samples, tmp_path):
    from flows.retrain import retrain

    params = {"sources": {"edit": sample_sources(samples)["edit"]}, "shards": str(tmp_path / "shards"),
              "runs": str(tmp_path / "runs"), "registry": str(tmp_path / "registry.json"),
              "benchmark": str(samples / "reason_edit"), "preset": "tiny", "steps": 2, "num_inference_steps": 2}
    first = retrain(**params, model="mgie")
    assert first["promoted"] and first["candidate"]["model"] == "mgie"
    index = json.loads((tmp_path / "registry.json").read_text())["champion"]
    assert json.loads(open(f"{index['pipeline']}/model_index.json").read())["_class_name"] == "MGIEPipeline"


def test_demo_mgie_parameters_are_valid_flow_parameters(tmp_path):
    from model.mgie.train_config import get_mgie_train_preset

    train, evaluate = mgie_parameters(tmp_path)
    assert train["model"] == "mgie" and evaluate["pipeline_dir"].startswith(train["output_dir"])
    cfg = get_mgie_train_preset(train["preset"], steps=train["steps"], output_dir=train["output_dir"])
    assert cfg.steps == 4 and cfg.cpu
