"""The converters on the project's generated sample data (pipeline.samples): every record of every split
is converted (counts equal samples.json), nothing is rejected, and the written shards verify."""

from __future__ import annotations

import json

import pytest

from pipeline.sources import convert_source
from pipeline.verify import verify_dataset

# source, root under the sample dir, samples.json counts key
JOBS = [
    ("cocostuff", "cocostuff", "cocostuff"),
    ("refcoco", "refer", "refcoco_unc"),
    ("refcoco+", "refer", "refcoco+_unc"),
    ("refcocog", "refer", "refcocog_umd"),
    ("grefcoco", "refer", "grefcoco_unc"),
    ("reasonseg", "ReasonSeg", "reasonseg"),
    ("llava-instruct", "llava", "llava_instruct_150k"),
    ("instructpix2pix", "instructpix2pix/folder", "instructpix2pix_folder"),
    ("instructpix2pix", "instructpix2pix/parquet", "instructpix2pix_parquet"),
    ("magicbrush", "magicbrush", "magicbrush"),
    ("magicbrush", "magicbrush/legacy", "magicbrush_legacy"),
]


@pytest.fixture(scope="module")
def sample_dir(samples_seed0):
    return samples_seed0.root


@pytest.mark.parametrize("source,root,key", JOBS, ids=[f"{s}:{r}" for s, r, _ in JOBS])
def test_sample_data_converts_completely(sample_dir, tmp_path, source, root, key):
    expected = json.loads((sample_dir / "samples.json").read_text())["counts"][key]
    manifests = convert_source(source, sample_dir / root, tmp_path, shard_size=8)
    assert {split: m["counts"]["in"] for split, m in manifests.items()} == expected
    for split, m in manifests.items():
        assert m["counts"]["rejected"] == 0, (split, m["counts"]["rejected_by_reason"])
        report = verify_dataset(tmp_path / source / split)
        assert report.ok, report.problems
