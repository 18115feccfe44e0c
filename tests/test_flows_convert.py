"""The three convert-* flows under a Prefect test server, on the bundled sample data."""

from __future__ import annotations

import json

import pytest

from flows.demo import sample_sources
from pipeline.manifest import find_manifests, load_manifest
from pipeline.verify import verify_dataset


@pytest.fixture(scope="module")
def samples(samples_seed0):
    return samples_seed0, samples_seed0.root


def test_convert_flows_write_verified_manifests(prefect_harness, samples, tmp_path):
    from flows.convert import convert_edit, convert_segmentation, convert_vqa

    sample_set, root = samples
    sources = sample_sources(root)
    out = tmp_path / "shards"
    paths = []
    paths += convert_segmentation(sources=sources["segmentation"], output=str(out), shard_size=8, workers=2, runner="threads")
    paths += convert_vqa(sources=sources["vqa"], output=str(out), shard_size=8, workers=1, runner="threads")
    paths += convert_edit(sources=sources["edit"], output=str(out), shard_size=8, workers=2, runner="process")
    assert sorted(paths) == sorted(str(p) for p in find_manifests(out))

    counts = json.loads((root / "samples.json").read_text())["counts"]
    by_name = {load_manifest(p)["name"]: load_manifest(p) for p in paths}
    assert by_name["refcoco-train"]["counts"]["in"] == counts["refcoco_unc"]["train"]
    assert by_name["llava-instruct-train"]["counts"]["in"] == counts["llava_instruct_150k"]["train"]
    assert by_name["magicbrush-dev"]["counts"]["in"] == counts["magicbrush"]["dev"]
    for path in paths:
        index = load_manifest(path)
        assert index["provenance"]["flow_run_id"], "manifests written in a flow run record its id"
        assert len(index["input_fingerprint"]) == 64
        assert verify_dataset(path).ok, verify_dataset(path).problems


def test_convert_flow_refuses_a_source_of_another_group(prefect_harness, samples, tmp_path):
    from flows.convert import convert_vqa

    _, root = samples
    with pytest.raises(ValueError, match="does not belong to convert-vqa"):
        convert_vqa(sources=sample_sources(root)["edit"], output=str(tmp_path), runner="threads")


def test_dask_runner_on_a_local_cluster(prefect_harness, samples, tmp_path):
    from flows.convert import convert_vqa

    _, root = samples
    paths = convert_vqa(sources=sample_sources(root)["vqa"], output=str(tmp_path), shard_size=16, workers=2, runner="dask")
    assert len(paths) == 1 and verify_dataset(paths[0]).ok


def _comparable(index: dict) -> dict:
    """A manifest without what names the run (creation time, flow run id)."""
    provenance = {k: v for k, v in index["provenance"].items() if k not in ("created", "flow_run_id")}
    return {**{k: v for k, v in index.items() if k != "provenance"}, "provenance": provenance}


def test_cli_and_flow_conversion_write_the_same_manifest(prefect_harness, samples, tmp_path):
    """One driver (pipeline/convert.py): the flow and `smartedit convert` record the same fields, input_fingerprint included."""
    from flows.convert import convert_edit
    from pipeline.sources import convert_source  # what `smartedit convert` calls

    _, root = samples
    source = next(s for s in sample_sources(root)["edit"] if s["source"] == "magicbrush")
    by_flow = convert_edit(sources=[source], output=str(tmp_path / "flow"), shard_size=3, workers=1, runner="threads")
    by_cli = convert_source("magicbrush", source["root"], tmp_path / "cli", shard_size=3)
    for path in by_flow:
        flow_index = load_manifest(path)
        split = flow_index["provenance"]["spec"]["split"]
        cli_index = by_cli[split]
        assert len(cli_index["input_fingerprint"]) == 64
        assert all(len(s["fingerprint"]) == 64 for s in cli_index["shardlist"])
        assert _comparable(flow_index) == _comparable(cli_index)
    assert sorted(by_cli) == sorted(load_manifest(p)["provenance"]["spec"]["split"] for p in by_flow)
