"""The convert flows on cluster engines: a real local Dask cluster (separate worker processes) reached by address,
as an existing cluster would be, and a local Ray instance (prefect-ray) write the same shard bytes as the local
process runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from convert_fixtures import build_sources
from pipeline.manifest import load_manifest


def _shard_bytes(paths: list[str]) -> dict[str, bytes]:
    out = {}
    for p in paths:
        index = load_manifest(p)
        for entry in index["shardlist"]:
            out[f"{index['name']}/{entry['url']}"] = (Path(p).parent / entry["url"]).read_bytes()
    return out


def test_dask_and_ray_write_the_same_shards_as_the_process_runner(prefect_harness, tmp_path):
    from distributed import Client, LocalCluster

    from flows.convert import convert_segmentation

    fx = build_sources(tmp_path / "src")
    sources = [{"source": "refcoco", "root": str(fx.roots["refcoco"]), "splits": ["train"],
                "options": fx.options.get("refcoco", {})}]
    run = dict(sources=sources, shard_size=2, workers=2, announce=False)
    local = convert_segmentation(output=str(tmp_path / "process"), runner="process", **run)
    ours = _shard_bytes(local)
    assert len(ours) >= 3

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_port=0) as cluster, Client(cluster) as client:
        on_dask = convert_segmentation(output=str(tmp_path / "dask"), runner="dask",
                                       address=cluster.scheduler_address, **run)
        # the shard tasks ran in the cluster's two worker processes (one task per shard), not in this one
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert _shard_bytes(on_dask) == ours
    assert len(executed) == 2 and sum(executed.values()) >= len(ours)
    assert [load_manifest(p)["counts"] for p in on_dask] == [load_manifest(p)["counts"] for p in local]

    pytest.importorskip("prefect_ray")
    # a local Ray instance with 2 CPUs, started for the flow and shut down when it ends
    on_ray = convert_segmentation(output=str(tmp_path / "ray"), runner="ray", **run)
    assert _shard_bytes(on_ray) == ours
