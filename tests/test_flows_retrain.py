"""The scheduled retraining chain end to end on the sample data with the tiny preset, and the evaluate flow."""

from __future__ import annotations

import json
import os

import pytest

from flows.demo import sample_sources


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from pipeline.samples import make_samples

    out = tmp_path_factory.mktemp("samples")
    make_samples(out, seed=0)
    return out


def _params(samples, tmp_path):
    return {
        "sources": {"edit": sample_sources(samples)["edit"]},
        "shards": str(tmp_path / "shards"),
        "runs": str(tmp_path / "runs"),
        "registry": str(tmp_path / "registry.json"),
        "benchmark": str(samples / "reason_edit"),
        "synthetic": {"input": str(samples), "config": {"scenarios": {"left_right": 4, "colour": 4}, "shard_size": 8}},
        "preset": "tiny",
        "steps": 2,
        "num_inference_steps": 2,
    }


def test_retrain_promotes_first_then_skips_unchanged_sources_and_gates(prefect_harness, samples, tmp_path):
    from flows.retrain import retrain, source_is_current
    from flows.convert import SourceParams

    params = _params(samples, tmp_path)
    first = retrain(**params)
    # training splits only: MagicBrush's dev split is converted (it is an input) but listed as excluded
    rows = {r["dataset"]: r for r in first["datasets"]}
    assert rows["magicbrush-dev"]["training"] == "excluded" and "held out" in rows["magicbrush-dev"]["why"]
    assert {r["split"] for r in rows.values() if r["training"] == "used"} == {"train", "-"}  # "-": synthetic
    assert not [p for p in first["candidate"]["manifests"] if "/dev/" in p]
    stages = {s["stage"]: s["status"] for s in first["stages"]}
    assert stages["convert-segmentation"] == stages["convert-vqa"] == "skipped"  # no sources given: logged, listed
    assert stages["convert-edit"] == stages["build-synthetic"] == stages["train"] == "ran"
    assert first["promoted"] and first["reasons"] == ["no champion yet"]
    assert {"instructpix2pix", "magicbrush"} and first["skipped"] == []
    registry = json.loads((tmp_path / "registry.json").read_text())
    champion = registry["champion"]
    assert champion["pipeline"] == first["candidate"]["pipeline"]
    assert set(champion["metrics"]) >= {"understanding.psnr", "reasoning.psnr"}
    assert all(len(h) == 64 for h in champion["manifests"].values())
    report = (tmp_path / "runs").glob("candidate-*/eval/report.md")
    assert any("Table 1" in p.read_text() or "SmartEdit-7B" in p.read_text() for p in report)

    # Nothing new: both sources are skipped; a strict gate (zero tolerance) decides against any regression.
    second = retrain(**params, tolerances={"understanding.psnr": 0.0, "reasoning.psnr": 0.0})
    assert sorted(second["skipped"]) == ["instructpix2pix", "magicbrush"] and second["converted"] == []
    registry = json.loads((tmp_path / "registry.json").read_text())
    assert len(registry["history"]) == 2
    cand, champ = second["candidate"]["metrics"], first["candidate"]["metrics"]
    worse = any(cand[k] < champ[k] for k in ("understanding.psnr", "reasoning.psnr"))
    assert second["promoted"] is (not worse)
    assert registry["champion"]["pipeline"] == (first if worse else second)["candidate"]["pipeline"]

    # A changed input makes its source stale again.
    magicbrush = SourceParams.model_validate(sample_sources(samples)["edit"][1])
    assert source_is_current(magicbrush, tmp_path / "shards")
    parquet = next((samples / "magicbrush").rglob("*.parquet"))
    os.utime(parquet, ns=(parquet.stat().st_atime_ns, parquet.stat().st_mtime_ns + 10**9))
    assert not source_is_current(magicbrush, tmp_path / "shards")
