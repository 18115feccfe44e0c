"""The shared shard writer, manifest and verify: atomicity, reproducibility, counts, readers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.convert import plan_shards
from pipeline.manifest import finalize_dataset, load_manifest
from pipeline.provenance import Provenance
from pipeline.records import Reject, Sample, make_key
from pipeline.verify import verify_dataset
from pipeline.writer import stats_path, write_shard


def _jpeg(i: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _mask(i: int) -> bytes:
    arr = np.zeros((48, 48), np.uint8)
    arr[i % 40 : i % 40 + 8, 4:20] = 255
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, "PNG")
    return buf.getvalue()


def records(start: int, stop: int):
    """Referring samples with every 7th record rejected, as a reader would yield them."""
    for i in range(start, stop):
        if i % 7 == 6:
            yield Reject(f"fixture.json:{i}", "image_missing", "image file not found")
            continue
        meta = {"kind": "referring_mask", "source": "fixture", "split": "train", "source_id": str(i),
                "sentences": [f"the thing number {i}"], "no_target": False}
        yield Sample(make_key("fixture", "train", i), meta, {"jpg": _jpeg(i), "mask.png": _mask(i)})


def build(out: Path, n: int = 30, shard_size: int = 8) -> dict:
    plans = plan_shards("fixture-train", n, shard_size)
    for plan in plans:
        write_shard(out / plan.name, records(plan.start, plan.stop))
    return finalize_dataset(out, name="fixture-train", shard_names=[p.name for p in plans],
                            provenance=Provenance.now("fixture", {"n": n}))


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def test_manifest_counts_and_wids_fields(tmp_path):
    index = build(tmp_path)
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [e["url"] for e in index["shardlist"]] == [f"fixture-train-{i:06d}.tar" for i in range(4)]
    counts = index["counts"]
    expected_rejects = sum(1 for i in range(30) if i % 7 == 6)
    assert counts["in"] == 30
    assert counts["rejected"] == expected_rejects == counts["rejected_by_reason"]["image_missing"]
    assert counts["kept"] == 30 - expected_rejects == sum(e["nsamples"] for e in index["shardlist"])
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == [f"fixture.json:{i}" for i in range(30) if i % 7 == 6]
    for entry in index["shardlist"]:
        data = (tmp_path / entry["url"]).read_bytes()
        assert entry["filesize"] == len(data)
        assert entry["md5sum"] == hashlib.md5(data).hexdigest()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    prov = index["provenance"]
    assert prov["source"] == "fixture" and prov["spec"] == {"n": 30} and len(prov["spec_hash"]) == 64
    assert prov["code_version"].startswith("0.1.0")


def test_schema_violations_are_quarantined_not_written(tmp_path):
    bad = Sample("fixture-bad", {"kind": "referring_mask", "source": "fixture", "split": "train",
                                 "source_id": "x", "sentences": "not a list", "no_target": False},
                 {"jpg": _jpeg(0), "mask.png": _mask(0)})
    dotted = Sample("fixture.dotted", {"kind": "vqa", "source": "fixture", "split": "train", "source_id": "y",
                                       "conversations": []}, {"jpg": _jpeg(1)})
    good = next(records(0, 1))
    stats = write_shard(tmp_path / "s-000000.tar", [good, bad, dotted, good])
    assert stats.nsamples == 1 and stats.n_in == 4
    assert stats.rejected_by_reason == {"duplicate_key": 1, "schema": 2}
    assert "sentences" in stats.rejects[0]["detail"]


def test_two_runs_are_byte_identical(tmp_path):
    build(tmp_path / "a")
    build(tmp_path / "b")
    a, b = shard_hashes(tmp_path / "a"), shard_hashes(tmp_path / "b")
    assert a == b and len(a) == 4


def test_webdataset_and_wids_read_every_shard(tmp_path):
    import webdataset as wds
    import wids

    index = build(tmp_path)
    urls = [str(tmp_path / e["url"]) for e in index["shardlist"]]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False).decode(wds.imagehandler("pill", ["png"]), "pil"):
        assert sample["mask.png"].mode == "L" and sample["jpg"].size == (48, 48)
        seen.append(sample["json"]["source_id"])
    assert seen == [str(i) for i in range(30) if i % 7 != 6]

    ds = wids.ShardListDataset(str(tmp_path / "shardindex.json"), localname=lambda u: u, transformations=[])
    assert len(ds) == index["counts"]["kept"]
    last = ds[len(ds) - 1]
    assert json.loads(last[".json"].read())["source_id"] == "29" and last["__key__"] == "fixture-train-29"


def test_verify_accepts_good_and_catches_flipped_byte_and_truncation(tmp_path):
    index = build(tmp_path)
    assert verify_dataset(tmp_path).ok

    first = tmp_path / index["shardlist"][0]["url"]
    data = bytearray(first.read_bytes())
    data[700] ^= 0xFF
    first.write_bytes(bytes(data))
    report = verify_dataset(tmp_path)
    assert not report.ok
    assert any(first.name in p and "hash" in p for p in report.problems)

    second = tmp_path / index["shardlist"][1]["url"]
    second.write_bytes(second.read_bytes()[:3000])
    problems = verify_dataset(tmp_path).problems
    assert any(second.name in p and "size" in p for p in problems)
    assert any(second.name in p and "unreadable tar" in p for p in problems)


def test_verify_cli_exit_codes(tmp_path):
    index = build(tmp_path)
    from smartedit_cli.main import main

    assert main(["shards", "verify", str(tmp_path)]) == 0
    (tmp_path / index["shardlist"][2]["url"]).unlink()
    assert main(["shards", "verify", str(tmp_path)]) == 1


def test_inspect_cli_table_and_json(tmp_path, capsys):
    build(tmp_path / "ds")
    from smartedit_cli.main import main

    assert main(["shards", "inspect", str(tmp_path), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "fixture-train" in out and "image_missing 4" in out and "fixture-train-0" in out
    assert main(["shards", "inspect", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)[0]
    assert summary["samples"] == 26 and summary["rejected_by_reason"] == {"image_missing": 4}


_KILLED_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_shards import records
from pipeline.writer import write_shard

def slow():
    for i, item in enumerate(records(0, 8)):
        if i == 5:
            Path({flag!r}).touch()
            time.sleep(600)
        yield item

write_shard(Path({shard!r}), slow())
"""


def test_killed_writer_leaves_no_final_shard_and_rerun_matches(tmp_path):
    out = tmp_path / "killed"
    shard = out / "fixture-train-000000.tar"
    flag = tmp_path / "reached"
    code = _KILLED_WRITER.format(tests=str(Path(__file__).parent), flag=str(flag), shard=str(shard))
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, "writer exited before reaching the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not shard.exists() and not stats_path(shard).exists()
    assert len(list(out.glob("fixture-train-000000.tar.*.tmp"))) == 1  # a unique temporary name, never the final one

    build(out)  # the rerun: finishes every shard, the killed one included
    build(tmp_path / "clean")
    assert shard_hashes(out) == shard_hashes(tmp_path / "clean")
    assert verify_dataset(out).ok


def test_rerun_skips_completed_shards(tmp_path):
    build(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")}
    time.sleep(0.01)
    build(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")} == before


def test_load_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="shardindex.json"):
        load_manifest(tmp_path)
    (tmp_path / "shardindex.json").write_text('{"__kind__": "other"}')
    with pytest.raises(ValueError, match="__kind__"):
        load_manifest(tmp_path)
