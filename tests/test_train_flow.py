"""The `train` Prefect flow end to end on the tiny preset (CPU), under the session's Prefect test server."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from test_train_data import write_dataset, write_stage2_datasets


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_train_flow_runs_publishes_and_resumes(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.train import train

    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards")]
    out = tmp_path / "run"
    summary = train(preset="tiny", stage=2, steps=2, manifests=manifests, output_dir=str(out),
                    allow_missing_sources=True)
    assert summary["steps"] == 2 and summary["start_step"] == 0
    assert set(summary["final"]) >= {"loss", "lm_loss", "diffusion_loss", "lr"}
    final = summary["final"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in final.values())
    assert final["loss"] > 0 and final["lm_loss"] > 0 and final["diffusion_loss"] > 0 and final["lr"] > 0
    # stage 2 weighs LM and diffusion losses 1 : 1 (paper), so the total is their sum on the logged step
    assert final["loss"] == pytest.approx(final["lm_loss"] + final["diffusion_loss"], rel=1e-4)
    assert Path(summary["checkpoint"]).name == "step-00000002"
    assert (Path(summary["pipeline_dir"]) / "model_index.json").exists()

    with get_client(sync_client=True) as client:
        artifacts = client.read_latest_artifacts()
    art = next(a for a in artifacts if a.key == "train-stage2-tiny")
    assert "step-00000002" in art.data and "diffusion_loss" in art.data

    # a rerun with more steps continues from the newest checkpoint (resume="latest" is the default)
    again = train(preset="tiny", stage=2, steps=3, manifests=manifests, output_dir=str(out), allow_missing_sources=True)
    assert (again["start_step"], again["steps"]) == (2, 3)


def test_train_flow_rejects_bad_parameters(prefect_harness, tmp_path):
    from flows.train import train

    caps = str(write_dataset(tmp_path, "cc12m", "cc12m", "caption", 4))
    with pytest.raises(ValueError, match="manifests"):
        train(preset="tiny", stage=2, manifests=[], output_dir=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="init_from is a stage-2 parameter"):
        train(preset="tiny", stage=1, manifests=[caps], output_dir=str(tmp_path / "x"), init_from="somewhere")


def test_gpu_limit_is_created_once_and_then_guards_strictly(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from flows.common import GPU_LIMIT, ensure_gpu_limit

    ensure_gpu_limit(2)
    ensure_gpu_limit(5)  # exists already: left as it is
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        assert limit.limit == 2
        with concurrency(GPU_LIMIT, occupy=1, strict=True):
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 1
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
        client.delete_global_concurrency_limit_by_name(GPU_LIMIT)


def test_manifests_parameter_takes_a_path_or_a_directory_of_datasets(tmp_path):
    """The `shards.built` trigger passes the event's output root as one string."""
    from test_shards import build

    from flows.train import expand_manifests

    build(tmp_path / "root" / "a", n=4)
    build(tmp_path / "root" / "b", n=4)
    found = expand_manifests(str(tmp_path / "root"))
    assert found == [str(tmp_path / "root" / d / "shardindex.json") for d in ("a", "b")]
    assert expand_manifests([found[0]]) == [found[0]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no shardindex.json"):
        expand_manifests(str(tmp_path / "empty"))
