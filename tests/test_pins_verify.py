"""Pins `shards verify`: each tamper case changes one thing, re-signs the manifest's hashes where needed so that only
the check under test can see it, and must make `smartedit shards verify` exit 1 with that one problem."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pipeline.manifest import INDEX_NAME, REJECTS_NAME, finalize_dataset
from pipeline.provenance import Provenance
from pipeline.records import Reject, Sample
from pipeline.verify import verify_dataset
from pipeline.writer import write_shard
from smartedit_cli.main import main


def _vqa(i: int) -> Sample:
    meta = {"kind": "vqa", "source": "llava-instruct", "split": "train", "source_id": str(i),
            "conversations": [{"from": "human", "value": f"q{i}"}]}
    return Sample(f"s{i:03d}", meta, {"jpg": bytes([i]) * 50})


@pytest.fixture()
def ds(tmp_path) -> Path:
    root = tmp_path / "ds"
    write_shard(root / "a.tar", [_vqa(0), _vqa(1), Reject("x:1", "empty_text", "")])
    write_shard(root / "b.tar", [_vqa(2), Reject("x:2", "image_missing", ""), Reject("x:3", "image_missing", "")])
    finalize_dataset(root, name="ds", shard_names=["a.tar", "b.tar"], provenance=Provenance("llava-instruct"))
    report = verify_dataset(root)
    assert report.ok and report.shards == 2 and report.samples == 3, report.problems
    return root


def _index(root: Path) -> dict:
    return json.loads((root / INDEX_NAME).read_text())


def _save_index(root: Path, index: dict) -> None:
    (root / INDEX_NAME).write_text(json.dumps(index))


def _rewrite_tar(root: Path, shard: str, members: list[tuple[str, bytes]], *, resign: bool = True) -> None:
    """Replace a shard's members (name, data) with the stdlib tarfile; re-sign the index so hashes still match."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    (root / shard).write_bytes(data)
    if resign:
        index = _index(root)
        for e in index["shardlist"]:
            if e["url"] == shard:
                e.update(filesize=len(data), md5sum=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest())
        _save_index(root, index)


def _members(root: Path, shard: str) -> list[tuple[str, bytes]]:
    with tarfile.open(root / shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _only_problem(root: Path, fragment: str, **kw) -> None:
    problems = verify_dataset(root, **kw).problems
    assert len(problems) == 1 and fragment in problems[0], problems
    assert main(["shards", "verify", str(root)]) == 1


def test_schema_is_revalidated(ds):
    members = _members(ds, "a.tar")
    bad = json.loads(members[1][1])
    del bad["conversations"]  # a vqa sample without its conversations
    members[1] = (members[1][0], json.dumps(bad).encode())
    _rewrite_tar(ds, "a.tar", members)
    _only_problem(ds, "'s000' (vqa): json field 'conversations'")
    assert verify_dataset(ds, check_schema=False).ok
    assert main(["shards", "verify", "--no-schema", str(ds)]) == 0


def test_unexpected_member_is_a_schema_problem(ds):
    _rewrite_tar(ds, "a.tar", _members(ds, "a.tar") + [("s001.txt", b"x")])
    _only_problem(ds, "unexpected members ['txt']")


def test_missing_json_member(ds):
    members = [m for m in _members(ds, "a.tar") if m[0] != "s001.json"]
    _rewrite_tar(ds, "a.tar", members)
    _only_problem(ds, "sample 's001' has no json member")


def test_nsamples_is_recounted(ds):
    index = _index(ds)
    index["shardlist"][1]["nsamples"] = 2
    index["counts"]["kept"] = 4
    index["counts"]["in"] = 7
    _save_index(ds, index)
    _only_problem(ds, "b.tar: holds 1 samples, manifest says 2")


def test_counts_in_must_equal_kept_plus_rejected(ds):
    index = _index(ds)
    index["counts"]["in"] += 1
    _save_index(ds, index)
    _only_problem(ds, "counts in 7 != kept 3 + rejected 3")


def test_counts_kept_must_equal_the_shards(ds):
    index = _index(ds)
    index["counts"]["kept"] += 1
    index["counts"]["in"] += 1
    _save_index(ds, index)
    _only_problem(ds, "counts.kept differs from the sum of shard nsamples")


def _has_problem(root: Path, fragment: str) -> None:
    problems = verify_dataset(root).problems
    assert any(fragment in p for p in problems), problems
    assert main(["shards", "verify", str(root)]) == 1


def test_rejects_file_must_hold_every_reject(ds):
    lines = (ds / REJECTS_NAME).read_text().splitlines()
    (ds / REJECTS_NAME).write_text("\n".join(lines[:-1]) + "\n")
    _has_problem(ds, "rejects.jsonl: 2 lines, manifest counts 3 rejected")
    (ds / REJECTS_NAME).unlink()
    _has_problem(ds, "rejects.jsonl: 0 lines")


def test_size_and_each_hash_are_checked(ds):
    index = _index(ds)
    index["shardlist"][0]["md5sum"] = "0" * 32
    _save_index(ds, index)
    _only_problem(ds, "a.tar: content hash differs")
    index["shardlist"][0]["md5sum"] = hashlib.md5((ds / "a.tar").read_bytes()).hexdigest()
    index["shardlist"][0]["sha256"] = "0" * 64
    _save_index(ds, index)
    _only_problem(ds, "a.tar: content hash differs")
    index["shardlist"][0]["sha256"] = hashlib.sha256((ds / "a.tar").read_bytes()).hexdigest()
    index["shardlist"][0]["filesize"] += 512
    _save_index(ds, index)
    _only_problem(ds, "a.tar: size")


def test_missing_shard(ds):
    (ds / "b.tar").unlink()
    _only_problem(ds, "b.tar: listed in shardindex.json but missing on disk")


def test_truncated_tar_is_unreadable(ds):
    data = (ds / "a.tar").read_bytes()
    (ds / "a.tar").write_bytes(data[:700])
    problems = verify_dataset(ds).problems
    assert any("unreadable tar" in p for p in problems) and any("size 700 bytes" in p for p in problems)
    assert main(["shards", "verify", str(ds)]) == 1


def test_duplicate_key_across_shards(ds):
    members = [(n.replace("s002", "s000"), d) for n, d in _members(ds, "b.tar")]
    _rewrite_tar(ds, "b.tar", members)
    _only_problem(ds, "key 's000' appears twice in the dataset")


def test_non_contiguous_and_repeated_members(ds):
    a = _members(ds, "a.tar")  # s000.jpg s000.json s001.jpg s001.json
    _rewrite_tar(ds, "a.tar", [a[0], a[2], a[3], a[1]])
    problems = verify_dataset(ds).problems
    assert any("members of sample 's000' are not contiguous" in p for p in problems), problems
    assert main(["shards", "verify", str(ds)]) == 1
    _rewrite_tar(ds, "a.tar", [a[0], a[1], a[1], a[2], a[3]])
    _only_problem(ds, "sample 's000' repeats member 'json'")


def test_member_names_and_types(ds):
    a = _members(ds, "a.tar")
    _rewrite_tar(ds, "a.tar", a + [("README", b"x")])
    _only_problem(ds, "member 'README' is not 'key.ext'")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in a:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("s009.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    _rewrite_tar(ds, "a.tar", [])
    (ds / "a.tar").write_bytes(buf.getvalue())
    index = _index(ds)
    data = buf.getvalue()
    index["shardlist"][0].update(filesize=len(data), md5sum=hashlib.md5(data).hexdigest(),
                                 sha256=hashlib.sha256(data).hexdigest())
    _save_index(ds, index)
    _only_problem(ds, "member 's009.jpg' is not a regular file")


def test_last_sample_of_a_shard_is_checked(ds):
    members = _members(ds, "b.tar")  # one sample: s002
    bad = json.loads(members[1][1])
    bad["kind"] = "nonsense"
    _rewrite_tar(ds, "b.tar", [members[0], (members[1][0], json.dumps(bad).encode())])
    _only_problem(ds, "json field 'kind' is 'nonsense'")


def test_foreign_or_missing_manifest_is_a_problem_not_a_crash(tmp_path, ds):
    report = verify_dataset(tmp_path / "nowhere")
    assert not report.ok and "no shardindex.json" in report.problems[0]
    index = _index(ds)
    index["__kind__"] = "other"
    _save_index(ds, index)
    _only_problem(ds, "field '__kind__'")


def test_rejects_file_edited_in_place_is_caught_by_its_hash(ds):
    lines = (ds / REJECTS_NAME).read_text().splitlines()
    edited = [json.dumps({**json.loads(lines[0]), "detail": "edited"}, sort_keys=True)] + lines[1:]
    (ds / REJECTS_NAME).write_text("\n".join(edited) + "\n")  # same line count, same reasons
    _only_problem(ds, "rejects.jsonl: sha256 differs from the manifest's rejects_sha256")


def test_reasons_in_the_index_must_match_the_rejects_file(ds):
    index = _index(ds)
    index["counts"]["rejected_by_reason"] = {"empty_text": 2, "image_missing": 1}
    _save_index(ds, index)
    _only_problem(ds, "counts.rejected_by_reason")


def test_a_shard_the_index_does_not_list(ds):
    (ds / "c.tar").write_bytes((ds / "b.tar").read_bytes())
    _only_problem(ds, "c.tar: a shard in the dataset directory that shardindex.json does not list")


def test_json_member_must_be_an_object(ds):
    members = _members(ds, "b.tar")
    _rewrite_tar(ds, "b.tar", [members[0], (members[1][0], b"[1, 2]")])
    _has_problem(ds, "json member is not an object")
