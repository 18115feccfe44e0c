"""MGIE through the project's flows: the scheduled retraining chain with model=mgie (convert, train, evaluate on
Reason-Edit, register), the SmartEdit-vs-MGIE comparison report, and the demo's MGIE parameters."""

from __future__ import annotations

import json

import pytest
import torch

from flows.demo import mgie_parameters, sample_sources


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def samples(samples_seed0):
    return samples_seed0.root  # read only: the flow writes its shards, runs and registry under tmp_path


def _smartedit_report(mgie_report):
    """A SmartEdit report over the same items with known values (the comparison's formatting is under test)."""
    import dataclasses

    from model.evaluation.report import EvaluationReport

    records = [dataclasses.replace(r, psnr=20.0 + i % 3, ssim=0.5, lpips=0.1, clip=None)
               for i, r in enumerate(mgie_report.records)]
    return EvaluationReport.from_records(records, protocol="corrected", model="runs/smartedit/pipeline",
                                         benchmark=mgie_report.benchmark, seeds=[0])


def test_retrain_trains_evaluates_and_registers_mgie_then_compares(prefect_harness, samples, tmp_path):
    """retrain(model=mgie): convert → train MGIE → the evaluate flow on its pipeline → the registry; then the
    comparison report beside a SmartEdit report."""
    from flows.retrain import retrain
    from model.evaluation.report import EvaluationReport
    from model.mgie.comparison import comparison_markdown

    params = {"sources": {"edit": sample_sources(samples)["edit"]}, "shards": str(tmp_path / "shards"),
              "runs": str(tmp_path / "runs"), "registry": str(tmp_path / "registry.json"),
              "benchmark": str(samples / "reason_edit"), "preset": "tiny", "steps": 2, "num_inference_steps": 2,
              "allow_fidelity_only": True}  # no CLIP weights in the sample data: the gate runs fidelity-only
    first = retrain(**params, model="mgie")
    assert first["promoted"] and first["candidate"]["model"] == "mgie"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the train flow ran MGIE and said so
        assert any(a.key == "train-mgie-tiny" and "MGIE" in a.data for a in client.read_latest_artifacts())
    champion = json.loads((tmp_path / "registry.json").read_text())["champion"]
    assert json.loads(open(f"{champion['pipeline']}/model_index.json").read())["_class_name"] == "MGIEPipeline"
    assert champion["metrics"]["understanding.psnr"] is not None

    mgie = EvaluationReport.read_json(first["report"].replace("report.md", "report.json"))
    smartedit = _smartedit_report(mgie)
    text = comparison_markdown({"SmartEdit": smartedit, "MGIE": mgie})
    assert "| **MGIE (ours)** | `pipeline` |" in text and "| **SmartEdit (ours)** | `pipeline` |" in text
    assert "| SmartEdit-7B (paper) | SmartEdit Table 1 | 22.049 |" in text
    assert "| MGIE-7B (paper) | not reported | missing |" in text and "publishes no Reason-Edit numbers" in text
    assert f"{mgie.groups['understanding'].psnr:.3f}" in text
    for category, agg in mgie.categories.items():
        assert f"| {category} | MGIE | {agg.n} |" in text
        ours = smartedit.categories[category]
        assert f"| {category} | SmartEdit | {ours.n} | {ours.psnr:.3f} | 0.500 | 0.100 | n/a |" in text


def test_demo_mgie_parameters_are_valid_flow_parameters(tmp_path):
    from model.mgie.train_config import get_mgie_train_preset

    train, evaluate = mgie_parameters(tmp_path)
    assert train["model"] == "mgie" and evaluate["pipeline_dir"].startswith(train["output_dir"])
    cfg = get_mgie_train_preset(train["preset"], steps=train["steps"], output_dir=train["output_dir"])
    assert cfg.steps == 4 and cfg.cpu
