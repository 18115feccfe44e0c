"""Shards on object storage: conversion, the atomic rule, the lock, `shards verify/inspect` and training reads
against a real S3 server (moto's server mode on 127.0.0.1, through s3fs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convert_fixtures import build_sources
from pipeline.convert import convert
from pipeline.manifest import load_manifest
from pipeline.sources import get_reader
from s3_server import BUCKET  # the `s3` fixture (tests/conftest.py) creates it


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return build_sources(tmp_path_factory.mktemp("src"))


class _Killed(BaseException):
    """Stands in for a killed process: the driver does not quarantine it."""


class _DyingReader:
    def __init__(self, inner, die_at: int):
        self.inner, self.die_at = inner, die_at

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read(self, index, record):
        if index == self.die_at:
            raise _Killed()
        return self.inner.read(index, record)


def _listing(fs, prefix: str) -> set[str]:
    fs.invalidate_cache()
    return {key.rsplit("/", 1)[-1] for key in fs.find(f"{BUCKET}/{prefix}")}


def test_bucket_conversion_is_byte_identical_atomic_and_resumable(s3, sources, tmp_path):
    fs, _ = s3
    reader = get_reader("refcoco", sources.roots["refcoco"], "train", **sources.options.get("refcoco", {}))
    local = convert(reader, tmp_path / "local", shard_size=2)
    url = f"s3://{BUCKET}/a/refcoco-train"

    with pytest.raises(_Killed):
        convert(_DyingReader(reader, die_at=5), url, shard_size=2)
    names = _listing(fs, "a/refcoco-train")
    killed = f"{local['name']}-000002"
    assert f"{killed}-000000.tar" not in names  # sanity of the name pattern below
    assert f"{local['name']}-000000.tar" in names and f"{local['name']}-000000.stats.json" in names
    # never a final-named object for the shard that died, nor its marker, nor a manifest
    assert f"{killed}.tar" not in names and f"{killed}.stats.json" not in names
    assert "shardindex.json" not in names and ".lock" not in names  # the lock went with the failed run

    remote = convert(reader, url, shard_size=2)
    assert [(s["url"], s["sha256"]) for s in remote["shardlist"]] == [(s["url"], s["sha256"]) for s in local["shardlist"]]
    assert remote["counts"] == local["counts"]
    names = _listing(fs, "a/refcoco-train")
    assert not any(n.endswith(".tmp") for n in names)
    for entry in local["shardlist"]:
        assert fs.cat_file(f"{BUCKET}/a/refcoco-train/{entry['url']}") == (tmp_path / "local" / entry["url"]).read_bytes()
    text = fs.cat_file(f"{BUCKET}/a/refcoco-train/shardindex.json").decode()
    assert "testing-secret" not in text and "testing-key" not in text  # credentials only in the environment
    assert load_manifest(url)["name"] == local["name"]


def test_lock_on_a_bucket_names_the_holder(s3):
    from pipeline.locking import DatasetLock, DatasetLockedError

    url = f"s3://{BUCKET}/locked/ds"
    with DatasetLock(url):
        with pytest.raises(DatasetLockedError, match=r"pid \d+, since .* holds its lock lease "
                                                     r"s3://smartedit-test/locked/ds/\.lock, which expires at "):
            DatasetLock(url).acquire()
    with DatasetLock(url):  # released: free again
        pass


def test_cli_verify_and_inspect_on_urls_and_training_reads(s3, sources, capsys, monkeypatch, tmp_path):
    from model.data import decode_members
    from model.train import expand_manifests
    from pipeline.shards import iter_samples, open_indexed
    from smartedit_cli.main import main

    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids"))  # where wids keeps downloaded shards
    fs, _ = s3
    reader = get_reader("reasonseg", sources.roots["reasonseg"], "train")
    url = f"s3://{BUCKET}/b/reasonseg-train"
    index = convert(reader, url, shard_size=2)

    # `smartedit convert --out s3://...` (the CLI) writes the same bytes as the library call
    assert main(["convert", "reasonseg", "--root", str(sources.roots["reasonseg"]), "--out", f"s3://{BUCKET}/c",
                 "--shard-size", "2"]) == 0
    capsys.readouterr()
    assert [s["sha256"] for s in load_manifest(f"s3://{BUCKET}/c/reasonseg/train")["shardlist"]] == \
        [s["sha256"] for s in index["shardlist"]]
    assert main(["shards", "verify", f"s3://{BUCKET}/b"]) == 0
    assert f"OK  {url}/shardindex.json" in capsys.readouterr().out
    assert main(["shards", "inspect", url, "--json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["samples"] == index["counts"]["kept"] and summary["shards"] == len(index["shardlist"])

    # training: manifests found below a bucket prefix, samples read through wids from the bucket
    assert expand_manifests(f"s3://{BUCKET}/b") == [f"{url}/shardindex.json"]
    ds = open_indexed(url)
    streamed = list(iter_samples(url))
    assert len(ds) == len(streamed) == index["counts"]["kept"]
    for i in (0, len(ds) - 1):
        got = ds[i]
        assert got["__key__"] == streamed[i]["__key__"]
        assert got[".json"].getvalue() == streamed[i]["json"]
        decoded = decode_members(got)  # what the training dataset does with a wids sample
        assert decoded["json"] == json.loads(streamed[i]["json"]) and decoded["mask.png"].ndim == 2

    # a corrupted object fails verification
    first = index["shardlist"][0]["url"]
    data = bytearray(fs.cat_file(f"{BUCKET}/b/reasonseg-train/{first}"))
    data[700] ^= 0xFF
    fs.pipe_file(f"{BUCKET}/b/reasonseg-train/{first}", bytes(data))
    assert main(["shards", "verify", url]) == 1
    assert "content hash differs" in capsys.readouterr().out


def test_convert_flow_writes_to_a_bucket_and_announces_the_url(s3, sources, prefect_harness):
    from flows.convert import convert_edit

    paths = convert_edit(sources=[{"source": "magicbrush", "root": str(sources.roots["magicbrush"])}],
                         output=f"s3://{BUCKET}/flow", shard_size=2, workers=2, runner="threads", announce=False)
    assert paths and all(p.startswith(f"s3://{BUCKET}/flow/") and p.endswith("/shardindex.json") for p in paths)
    for p in paths:
        index = load_manifest(p)
        assert index["counts"]["in"] == index["counts"]["kept"] + index["counts"]["rejected"]


def test_file_urls_are_local_paths(sources, tmp_path):
    from pipeline.shards import iter_samples

    reader = get_reader("reasonseg", sources.roots["reasonseg"], "train")
    plain = convert(reader, tmp_path / "plain", shard_size=2)
    url = convert(reader, f"file://{tmp_path}/url", shard_size=2)
    assert [s["sha256"] for s in url["shardlist"]] == [s["sha256"] for s in plain["shardlist"]]
    assert (tmp_path / "url" / "shardindex.json").is_file()
    assert len(list(iter_samples(f"file://{tmp_path}/url"))) == plain["counts"]["kept"]
