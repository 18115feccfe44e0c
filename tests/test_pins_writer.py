"""Pins the shard writer, the manifest and provenance: reproducible tar bytes read back member by member, atomic
writes, the completion marker, every count (in = kept + rejected, duplicates among the rejects), spec_hash."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline import writer as writer_mod
from pipeline.manifest import (
    INDEX_NAME,
    REJECTS_NAME,
    IncompleteDatasetError,
    finalize_dataset,
    find_manifests,
    index_path,
    load_manifest,
)
from pipeline.provenance import Provenance, spec_hash
from pipeline.records import Reject, Sample
from pipeline.writer import ShardStats, atomic_write_text, stats_path, write_shard


def _meta(i: int, **kw) -> dict:
    return {"kind": "vqa", "source": "llava-instruct", "split": "train", "source_id": str(i),
            "conversations": [{"from": "human", "value": f"q{i}"}], **kw}


def _vqa(i: int, key: str | None = None) -> Sample:
    return Sample(key or f"s{i:03d}", _meta(i), {"jpg": bytes([i]) * (100 + i)})


def _caption(i: int) -> Sample:
    return Sample(f"c{i:03d}", {"kind": "caption", "source": "cc12m", "split": "train", "source_id": str(i),
                                "caption": f"a cat {i}"})


def _items():
    return [_vqa(0), Reject("f.json:1", "empty_text", "no text"), _vqa(1), _vqa(1, key="s000"), _caption(2),
            Sample("bad", {"kind": "vqa", "source": "x", "split": "train", "source_id": "9"}, {"jpg": b"j"})]


# -- reproducible tars ----------------------------------------------------------------------------------------------
def test_tar_members_have_fixed_mtime_owner_mode_and_order(tmp_path):
    files = {"src.jpg": b"a" * 10, "tgt.jpg": b"b" * 700, "mask.png": b"m"}
    meta = {"kind": "edit_pair", "source": "magicbrush", "split": "train", "source_id": "1", "instruction": "x"}
    write_shard(tmp_path / "a.tar", [Sample("k1", meta, files), _vqa(3)])
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == ["k1.json", "k1.mask.png", "k1.src.jpg", "k1.tgt.jpg", "s003.jpg", "s003.json"]
        for m in members:
            assert m.mtime == 0
            assert (m.uname, m.gname) == ("smartedit", "smartedit")
            assert (m.uid, m.gid) == (0, 0)
            assert m.mode == 0o444 and m.isreg()
        assert tar.extractfile("k1.tgt.jpg").read() == files["tgt.jpg"]
        assert json.loads(tar.extractfile("k1.json").read()) == meta
        raw_json = tar.extractfile("s003.json").read()
        assert raw_json == json.dumps(_meta(3), sort_keys=True, ensure_ascii=False).encode()
    size = (tmp_path / "a.tar").stat().st_size
    assert size % tarfile.RECORDSIZE == 0


def test_equal_input_gives_equal_bytes_whatever_the_dict_order(tmp_path):
    a = Sample("k", {"kind": "edit_pair", "source": "m", "split": "t", "source_id": "1", "instruction": "x"},
               {"src.jpg": b"1", "tgt.jpg": b"2"})
    b = Sample("k", {"instruction": "x", "source_id": "1", "split": "t", "source": "m", "kind": "edit_pair"},
               {"tgt.jpg": b"2", "src.jpg": b"1"})
    sa, sb = write_shard(tmp_path / "a.tar", [a]), write_shard(tmp_path / "b.tar", [b])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert (sa.md5sum, sa.sha256, sa.filesize) == (sb.md5sum, sb.sha256, sb.filesize)


def test_recorded_hashes_and_size_match_an_independent_computation(tmp_path):
    stats = write_shard(tmp_path / "a.tar", _items())
    data = (tmp_path / "a.tar").read_bytes()
    assert stats.filesize == len(data)
    assert stats.md5sum == hashlib.md5(data).hexdigest()
    assert stats.sha256 == hashlib.sha256(data).hexdigest()
    with tarfile.open(tmp_path / "a.tar") as tar:  # the stdlib reads every member back whole
        # samples in input order, each sample's members sorted by extension
        assert [m.name for m in tar.getmembers()] == ["s000.jpg", "s000.json", "s001.jpg", "s001.json", "c002.json"]
        assert tar.extractfile("s001.jpg").read() == bytes([1]) * 101


# -- counts -----------------------------------------------------------------------------------------------------------
def test_counts_include_duplicate_and_schema_rejects(tmp_path):
    stats = write_shard(tmp_path / "a.tar", _items())
    assert stats.n_in == 6
    assert stats.nsamples == 3
    assert stats.n_rejected == 3
    assert stats.n_in == stats.nsamples + stats.n_rejected
    assert stats.rejected_by_reason == {"duplicate_key": 1, "empty_text": 1, "schema": 1}
    assert stats.kinds == {"caption": 1, "vqa": 2}
    assert stats.sources == {"cc12m": 1, "llava-instruct": 2}
    reasons = [r["reason"] for r in stats.rejects]
    assert reasons == ["empty_text", "duplicate_key", "schema"]
    assert stats.rejects[1]["location"] == "llava-instruct:1"
    # the first sample under a key wins; the duplicate's bytes never reach the tar
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert tar.extractfile("s000.jpg").read() == bytes([0]) * 100
    # validate=False admits the schema-invalid sample
    loose = write_shard(tmp_path / "b.tar", _items(), validate=False)
    assert loose.nsamples == 4 and loose.rejected_by_reason == {"duplicate_key": 1, "empty_text": 1}


def test_stats_marker_round_trips_and_carries_extra(tmp_path):
    stats = write_shard(tmp_path / "a.tar", _items(), extra={"yield": {"detect": 3}})
    marker = stats_path(tmp_path / "a.tar")
    assert marker.name == "a.stats.json"
    assert ShardStats.load(marker) == stats
    assert stats.extra == {"yield": {"detect": 3}}


# -- atomicity and resume ---------------------------------------------------------------------------------------------
def test_crash_leaves_only_the_temp_file_and_rerun_rewrites(tmp_path):
    path = tmp_path / "a.tar"

    def crashing():
        yield _vqa(0)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        write_shard(path, crashing())
    assert list(tmp_path.iterdir()) == []  # no final shard, no marker, and the temporary file is removed
    stats = write_shard(path, [_vqa(0), _vqa(1)])
    assert stats.nsamples == 2 and path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.stats.json", "a.tar"]


def test_completed_shard_is_skipped_without_reading_items(tmp_path):
    path = tmp_path / "a.tar"
    first = write_shard(path, [_vqa(0)])

    def must_not_run():
        raise AssertionError("items consumed for a finished shard")
        yield

    assert write_shard(path, must_not_run()) == first
    # a marker without its shard is not trusted: the shard is written again
    path.unlink()
    again = write_shard(path, [_vqa(0), _vqa(1)])
    assert again.nsamples == 2


def test_shard_is_written_to_a_temp_name_then_renamed(tmp_path, monkeypatch):
    """Spy on os.replace: the final name appears only by a rename from NAME.tar.tmp, after fsync."""
    calls: list[tuple[str, str]] = []
    fsynced: list[int] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        assert not Path(dst).exists() or Path(dst).name.endswith(".json")
        return real_replace(src, dst)

    def fsync(fd):
        fsynced.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(writer_mod.os, "replace", replace)
    monkeypatch.setattr(writer_mod.os, "fsync", fsync)
    write_shard(tmp_path / "a.tar", [_vqa(0)])
    assert [dst for _, dst in calls] == ["a.tar", "a.stats.json"]
    assert re.fullmatch(r"a\.tar\.\d+-[0-9a-f]+\.tmp", calls[0][0]), calls
    assert re.fullmatch(r"a\.stats\.json\.\d+-[0-9a-f]+\.tmp", calls[1][0]), calls
    assert len(fsynced) >= 3  # shard file, directory, marker file


def test_atomic_write_text_goes_through_a_temp_file(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(writer_mod.os, "replace", lambda s, d: (seen.append((Path(s).name, Path(d).name)), real(s, d)))
    atomic_write_text(tmp_path / "x.json", "{}")
    assert len(seen) == 1 and seen[0][1] == "x.json" and re.fullmatch(r"x\.json\.\d+-[0-9a-f]+\.tmp", seen[0][0])
    assert (tmp_path / "x.json").read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


# -- manifest ---------------------------------------------------------------------------------------------------------
def _dataset(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "ds"
    write_shard(root / "shard-000000.tar", _items())
    write_shard(root / "shard-000001.tar", [_vqa(7), Reject("g.json:2", "image_missing", "gone")])
    return root, ["shard-000000.tar", "shard-000001.tar"]


def test_manifest_lists_shards_counts_rejects_and_provenance(tmp_path):
    root, names = _dataset(tmp_path)
    prov = Provenance.now("llava-instruct", {"b": 1, "a": [1, 2]})
    index = finalize_dataset(root, name="ds", shard_names=names, provenance=prov, extra={"note": 1})
    assert load_manifest(root) == json.loads((root / INDEX_NAME).read_text()) == index
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1 and index["note"] == 1
    for entry, name in zip(index["shardlist"], names):
        data = (root / name).read_bytes()
        assert entry == {"url": name, "nsamples": entry["nsamples"], "filesize": len(data),
                         "md5sum": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}
    assert [e["nsamples"] for e in index["shardlist"]] == [3, 1]
    assert index["counts"] == {
        "in": 8, "kept": 4, "rejected": 4,
        "rejected_by_reason": {"duplicate_key": 1, "empty_text": 1, "image_missing": 1, "schema": 1},
        "kinds": {"caption": 1, "vqa": 3}, "sources": {"cc12m": 1, "llava-instruct": 3},
    }
    lines = [json.loads(x) for x in (root / REJECTS_NAME).read_text().splitlines()]
    assert [(x["shard"], x["reason"]) for x in lines] == [
        ("shard-000000.tar", "empty_text"), ("shard-000000.tar", "duplicate_key"), ("shard-000000.tar", "schema"),
        ("shard-000001.tar", "image_missing")]
    assert index["provenance"]["spec"] == {"b": 1, "a": [1, 2]}
    assert index["provenance"]["spec_hash"] == spec_hash({"a": [1, 2], "b": 1})


def test_manifest_refuses_counts_that_do_not_add_up(tmp_path):
    root, names = _dataset(tmp_path)
    marker = stats_path(root / names[1])
    stats = json.loads(marker.read_text())
    stats["n_in"] += 1  # one record lost without a reject
    marker.write_text(json.dumps(stats))
    with pytest.raises(AssertionError, match=r"counts in 9 != kept 4 \+ rejected 4"):
        finalize_dataset(root, name="ds", shard_names=names, provenance=Provenance("x"))
    assert not (root / INDEX_NAME).exists()


def test_manifest_refuses_unfinished_shards(tmp_path):
    root, names = _dataset(tmp_path)
    stats_path(root / names[0]).unlink()
    with pytest.raises(IncompleteDatasetError, match="shard-000000.tar"):
        finalize_dataset(root, name="ds", shard_names=names, provenance=Provenance("x"))
    root2, names2 = _dataset(tmp_path / "b")
    (root2 / names2[1]).unlink()  # marker left, shard gone
    with pytest.raises(IncompleteDatasetError, match="shard-000001.tar"):
        finalize_dataset(root2, name="ds", shard_names=names2, provenance=Provenance("x"))


def test_load_and_find_manifests(tmp_path):
    root, names = _dataset(tmp_path)
    finalize_dataset(root, name="ds", shard_names=names, provenance=Provenance("x"))
    assert index_path(root) == root / INDEX_NAME and index_path(root / INDEX_NAME) == root / INDEX_NAME
    assert find_manifests(tmp_path) == [root / INDEX_NAME]
    with pytest.raises(FileNotFoundError, match="no shardindex.json"):
        load_manifest(tmp_path / "nothing")
    foreign = tmp_path / "other" / INDEX_NAME
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"__kind__": "something-else", "shardlist": []}))
    with pytest.raises(ValueError, match="__kind__"):
        load_manifest(foreign)


# -- provenance -------------------------------------------------------------------------------------------------------
def test_spec_hash_ignores_key_order_at_every_level_and_sees_values():
    a = {"source": "refcoco", "options": {"split_by": "unc", "max_pixels": 10, "nested": {"x": 1, "y": [1, 2]}}}
    b = {"options": {"nested": {"y": [1, 2], "x": 1}, "max_pixels": 10, "split_by": "unc"}, "source": "refcoco"}
    assert spec_hash(a) == spec_hash(b)
    expected = hashlib.sha256(
        b'{"options":{"max_pixels":10,"nested":{"x":1,"y":[1,2]},"split_by":"unc"},"source":"refcoco"}'
    ).hexdigest()
    assert spec_hash(a) == expected
    assert spec_hash({**a, "source": "refcoco+"}) != spec_hash(a)
    assert spec_hash({"y": [2, 1]}) != spec_hash({"y": [1, 2]})  # list order is content


def test_provenance_now_records_utc_creation_time_and_hash():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    prov = Provenance.now("magicbrush", {"k": 2, "j": 1})
    after = datetime.now(timezone.utc)
    created = datetime.fromisoformat(prov.created)
    assert created.utcoffset() == timedelta(0)
    assert before <= created <= after
    assert prov.spec_hash == spec_hash({"j": 1, "k": 2}) and prov.source == "magicbrush"
    assert prov.code_version and prov.flow_run_id is None


def test_marker_of_other_settings_is_not_trusted(tmp_path, monkeypatch):
    path = tmp_path / "a.tar"
    first = write_shard(path, [_vqa(0)], fingerprint="f1")
    assert first.fingerprint == "f1"
    assert write_shard(path, iter(()), fingerprint="f1") == first  # same settings: skipped
    second = write_shard(path, [_vqa(0), _vqa(1)], fingerprint="f2")  # other settings: rewritten
    assert second.nsamples == 2 and ShardStats.load(stats_path(path)).fingerprint == "f2"

    # a crash between the new shard and its marker must not leave the old marker describing the new bytes
    def no_marker(p, text):
        raise OSError("disk full")

    monkeypatch.setattr(writer_mod, "atomic_write_text", no_marker)
    with pytest.raises(OSError):
        write_shard(path, [_vqa(5)], fingerprint="f3")
    assert not stats_path(path).exists()
