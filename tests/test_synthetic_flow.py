"""The build-synthetic flow under the Prefect test harness."""

from __future__ import annotations

import json
from pathlib import Path

from synthetic_fixtures import make_eval_set, make_scenes


def test_flow_builds_resumes_and_publishes(prefect_harness, tmp_path):
    from prefect.artifacts import Artifact

    from flows.build_synthetic import build_synthetic

    scenes = make_scenes(tmp_path / "scenes")
    out = tmp_path / "out"
    params = dict(input=str(scenes), output=str(out),
                  config={"scenarios": {"left_right": 2, "reasoning": 2, "mirror": 1}, "shard_size": 2, "seed": 0,
                          "eval_sets": [str(make_eval_set(tmp_path / "eval"))]})
    result = build_synthetic(**params)
    assert result["kept"] >= 3 and result["shards"] >= 2
    index = json.loads(Path(result["manifest"]).read_text())
    assert index["counts"]["kept"] == result["kept"] and index["yields"]
    assert Path(result["contact_sheet"]).is_file() and Path(result["smartedit_json"]).is_file()
    assert "## Yield per stage" in Path(result["data_card"]).read_text()
    for key in ("build-synthetic-yields", "build-synthetic-data-card", "build-synthetic-contact-sheet",
                "build-synthetic-manifest"):
        assert Artifact.get(key) is not None, key

    # a rerun finds every shard complete and rewrites none of them
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = build_synthetic(**params, announce=False)
    assert again["kept"] == result["kept"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes


def test_gpu_slot_runs_without_a_gpu_limit(prefect_harness):
    """The harness has no `gpu` concurrency limit: CUDA work creates it, then holds a slot strictly."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.common import GPU_LIMIT, gpu_slot

    @flow
    def uses_slot() -> int:
        with gpu_slot("cuda:0"):
            with get_client(sync_client=True) as client:
                return client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots

    assert uses_slot() == 1
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
        client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
