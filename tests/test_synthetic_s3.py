"""build-synthetic with its output (and its shard input) on a bucket, against a real S3 server (moto's server
mode on 127.0.0.1, through s3fs): the same bytes as a local build, the atomic rule, the dataset lock."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from convert_fixtures import build_sources
from pipeline.locking import DatasetLock, DatasetLockedError
from pipeline.manifest import load_manifest
from pipeline.synthetic.build import BuildInputs, build
from pipeline.synthetic.config import SCENARIOS, SyntheticConfig
from s3_server import BUCKET  # the `s3` fixture (tests/conftest.py) creates it
from synthetic_fixtures import make_scenes

ALL = {s: 10 for s in SCENARIOS}
CFG = SyntheticConfig(scenarios=ALL, shard_size=3, leakage_guard=False)  # test_synthetic_build.py's cheap build
CLI_CFG = ["--scenarios", "all=10", "--shard-size", "3", "--no-leakage-guard"]  # the same config on the CLI


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def local(scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    build(CFG, BuildInputs(input=str(scenes)), out)
    return out


def _listing(fs, prefix: str) -> set[str]:
    """Keys below ``BUCKET/prefix``, relative to it."""
    fs.invalidate_cache()
    base = f"{BUCKET}/{prefix}/"
    return {key[len(base):] for key in fs.find(base)}


def _hashes(dataset) -> list[tuple[str, str]]:
    return [(s["url"], s["sha256"]) for s in load_manifest(dataset)["shardlist"]]


class _Killed(BaseException):
    """Stands in for a killed process."""


def test_cli_build_into_a_bucket_writes_the_local_bytes_and_verifies(s3, scenes, local, capsys, tmp_path):
    from smartedit_cli.main import main

    fs, _ = s3
    url = f"s3://{BUCKET}/syn"
    assert main(["build-synthetic", "--input", str(scenes), "--out", url, *CLI_CFG]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["manifest"] == f"{url}/shardindex.json" and summary["contact_sheet"] == f"{url}/contact_sheet.png"

    remote, here = load_manifest(url), load_manifest(local)
    assert len(remote["shardlist"]) >= 2 and _hashes(url) == _hashes(local)
    assert remote["counts"] == here["counts"] and remote["counts"]["kept"] >= 6
    assert remote["counts"]["in"] == remote["counts"]["kept"] + remote["counts"]["rejected"]
    timeless = [[{k: v for k, v in row.items() if k != "seconds"} for row in i["yields"]] for i in (remote, here)]
    assert timeless[0] == timeless[1]
    assert _hashes(f"{url}/negatives") == _hashes(local / "negatives") != []

    assert main(["shards", "verify", url]) == 0
    out = capsys.readouterr().out
    assert f"OK  {url}/shardindex.json" in out and f"OK  {url}/negatives/shardindex.json" in out

    names = _listing(fs, "syn")
    assert {"plan.json", "rejects.jsonl", "DATA_CARD.md", "contact_sheet.png", "smartedit_json/synthetic_edit.json",
            "negatives/shardindex.json"} <= names
    assert not any(n.endswith(".tmp") for n in names) and ".lock" not in names  # the lock went with the run
    for name in ("rejects.jsonl", "DATA_CARD.md", "contact_sheet.png", "smartedit_json/synthetic_edit.json"):
        assert fs.cat_file(f"{BUCKET}/syn/{name}") == (local / name).read_bytes(), name
    images = {n for n in names if n.startswith("smartedit_json/images/")}
    assert images == {p.relative_to(local).as_posix() for p in (local / "smartedit_json" / "images").iterdir()}
    assert len(images) == 2 * remote["counts"]["kept"]

    # labelling page (local) from the bucket, then calibration written back into it with the data card
    capsys.readouterr()
    assert main(["synthetic", "label", url, "-o", str(tmp_path / "label.html"), "-n", "3"]) == 0
    keys = sorted(p.name.split(".")[0] for p in (tmp_path / "label_images").glob("*.src.png"))
    assert len(keys) >= 3
    (tmp_path / "labels.json").write_text(json.dumps({"labels": {k: True for k in keys}}))
    assert main(["synthetic", "calibrate", str(tmp_path / "labels.json"), "--dataset", url]) == 0
    assert json.loads(fs.cat_file(f"{BUCKET}/syn/calibration.json"))["labels"] == len(keys)
    assert "## Measured precision (from labels)" in fs.cat_file(f"{BUCKET}/syn/DATA_CARD.md").decode()


def test_killed_builds_leave_no_final_named_partial_object(s3, scenes, local, monkeypatch):
    import pipeline.writer
    from pipeline.synthetic.editors import LabEditor

    fs, _ = s3
    url, prefix = f"s3://{BUCKET}/killed", "killed"
    n_shards = len(load_manifest(local)["shardlist"])

    # 1. killed while a shard streams into its temporary object
    real_edit, calls = LabEditor.edit, {"n": 0}

    def dying_edit(self, pairs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_edit(self, pairs)

    monkeypatch.setattr(LabEditor, "edit", dying_edit)
    with pytest.raises(KeyboardInterrupt):
        build(CFG, BuildInputs(input=str(scenes)), url)
    monkeypatch.setattr(LabEditor, "edit", real_edit)
    names = _listing(fs, prefix)
    tars = {n.removesuffix(".tar") for n in names if n.endswith(".tar")}
    assert tars and tars == {n.removesuffix(".stats.json") for n in names if n.endswith(".stats.json")}
    assert len({t for t in tars if "/" not in t}) < n_shards  # the killed shard has neither object nor marker
    assert "shardindex.json" not in names and ".lock" not in names

    # 2. killed after a shard's temporary object was uploaded, before its copy to the final key
    real_replace = pipeline.writer.replace

    def dies_before_the_copy(src, dst):
        if dst.name.endswith(".tar") and dst.parent.name != "negatives":
            raise _Killed()
        real_replace(src, dst)

    monkeypatch.setattr(pipeline.writer, "replace", dies_before_the_copy)
    with pytest.raises(_Killed):
        build(CFG, BuildInputs(input=str(scenes)), url)
    monkeypatch.setattr(pipeline.writer, "replace", real_replace)
    names = _listing(fs, prefix)
    (tmp,) = [n for n in names if n.endswith(".tmp")]  # the uploaded temporary, as a kill -9 leaves it
    final = tmp.split(".tar.")[0]
    assert "/" not in final and f"{final}.tar" not in names and f"{final}.stats.json" not in names
    assert "shardindex.json" not in names and ".lock" not in names

    # 3. the rerun deletes the dead run's temporary (it holds the lock) and finishes with the local bytes
    build(CFG, BuildInputs(input=str(scenes)), url)
    assert _hashes(url) == _hashes(local) and _hashes(f"{url}/negatives") == _hashes(local / "negatives")
    assert not any(n.endswith(".tmp") for n in _listing(fs, prefix))


def test_a_second_build_into_the_same_output_is_refused(s3, scenes, tmp_path, capsys):
    from smartedit_cli.main import main

    fs, _ = s3
    for out in (f"s3://{BUCKET}/locked", str(tmp_path / "locked")):
        with DatasetLock(out):  # a build in progress
            assert main(["build-synthetic", "--input", str(scenes), "--out", out, *CLI_CFG]) == 1
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, err
            assert out in err and f"pid {os.getpid()}" in err  # names the output and the holder
            with pytest.raises(DatasetLockedError):
                build(CFG, BuildInputs(input=str(scenes)), out)
        fs.invalidate_cache()
        assert not fs.exists(f"{BUCKET}/locked/plan.json") and not (tmp_path / "locked" / "plan.json").exists()


def test_flow_builds_into_a_bucket_under_its_lock(s3, scenes, local, prefect_harness):
    from flows.build_synthetic import build_synthetic

    fs, _ = s3
    url = f"s3://{BUCKET}/flow"
    params = dict(input=str(scenes), output=url, config={"scenarios": ALL, "shard_size": 3, "leakage_guard": False},
                  workers=2, announce=False)
    with DatasetLock(url):
        with pytest.raises(DatasetLockedError, match=f"pid {os.getpid()}"):
            build_synthetic(**params)
    assert not fs.exists(f"{BUCKET}/flow/plan.json")
    result = build_synthetic(**params)
    assert result["manifest"] == f"{url}/shardindex.json" and result["kept"] == load_manifest(local)["counts"]["kept"]
    assert _hashes(url) == _hashes(local)
    assert ".lock" not in _listing(fs, "flow")


def test_shard_input_on_a_bucket_and_a_worker_without_the_scenes(s3, tmp_path, monkeypatch):
    from pipeline.convert import convert
    from pipeline.sources import get_reader

    fs, _ = s3
    monkeypatch.setenv("SMARTEDIT_SCENES_CACHE", str(tmp_path / "cache"))
    sources = build_sources(tmp_path / "src")
    reader = get_reader("refcoco", sources.roots["refcoco"], "train", **sources.options.get("refcoco", {}))
    convert(reader, tmp_path / "in" / "refcoco" / "train", shard_size=2)
    convert(reader, f"s3://{BUCKET}/in/refcoco/train", shard_size=2)
    cfg = SyntheticConfig(scenarios=ALL, shard_size=1, leakage_guard=False, verify=False)
    build(cfg, BuildInputs(input=str(tmp_path / "in")), tmp_path / "out")

    url = f"s3://{BUCKET}/from-shards"
    build(cfg, BuildInputs(input=f"s3://{BUCKET}/in"), url)  # converted shards read from the bucket
    assert len(_hashes(tmp_path / "out")) >= 2 and _hashes(url) == _hashes(tmp_path / "out")
    plan = json.loads(fs.cat_file(f"{BUCKET}/from-shards/plan.json"))
    assert plan["shard_input"]["samples"] >= 1 and plan["shard_input"]["datasets"] == [
        f"s3://{BUCKET}/in/refcoco/train/shardindex.json"]
    scenes_dir = Path(plan["sources"][0]).parents[1]
    assert scenes_dir.is_relative_to(tmp_path / "cache")  # materialised locally (pycocotools reads paths) ...
    uploaded = _listing(fs, "from-shards/input_scenes")  # ... and uploaded beside the shards
    assert uploaded == {p.relative_to(scenes_dir).as_posix() for p in scenes_dir.rglob("*") if p.is_file()}

    # a worker on another machine: no local scenes, one shard left to write; it fetches the scenes from the bucket
    shutil.rmtree(scenes_dir)
    last = _hashes(url)[-1][0]
    fs.rm([f"{BUCKET}/from-shards/{last}", f"{BUCKET}/from-shards/{last.removesuffix('.tar')}.stats.json"])
    build(cfg, BuildInputs(input=f"s3://{BUCKET}/in"), url)
    assert scenes_dir.is_dir() and _hashes(url) == _hashes(tmp_path / "out")

    with pytest.raises(FileNotFoundError, match="only converted shards are read from a bucket"):
        build(cfg, BuildInputs(input=f"s3://{BUCKET}/no-such-input"), f"s3://{BUCKET}/nothing")
