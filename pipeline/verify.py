"""Check a dataset against its manifest: hashes, sizes, tar integrity, member names, counts, keys and schemas."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.shards import REJECTS_NAME, SHARD_SUFFIX, index_path, iter_tar_samples, load_manifest
from pipeline.records import Sample
from pipeline.schema import SchemaError, validate_sample
from pipeline.storage import as_path

_CHUNK = 1 << 20


@dataclass
class VerifyReport:
    index: Path
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """For `smartedit shards verify --json`."""
        return {"index": str(self.index), "ok": self.ok, "shards": self.shards, "samples": self.samples,
                "problems": list(self.problems)}


def _hashes(path: Path) -> tuple[str, str, int]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with as_path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return md5.hexdigest(), sha.hexdigest(), size


def _samples_in_tar(path: Path, problems: list[str]) -> list[Sample]:
    """Group a shard's members into samples (`pipeline.shards.iter_tar_samples`), collecting every contract breach."""
    samples: list[Sample] = []
    try:
        for raw in iter_tar_samples(path, on_problem=problems.append):
            samples.append(Sample(raw["__key__"], {}, {k: v for k, v in raw.items() if not k.startswith("__")}))
    except (tarfile.TarError, EOFError, OSError) as err:
        problems.append(f"{path.name}: unreadable tar ({type(err).__name__}: {err}); rebuild this shard")
    return samples


def verify_dataset(path: Path | str, *, check_schema: bool = True) -> VerifyReport:
    """Re-hash every shard and re-read it; every problem is a sentence naming the shard and what is wrong.

    Checks: the manifest's form (fields, shard urls inside the dataset); per shard its size, md5 and
    sha256, tar integrity, member names (``key.ext``, no ``/`` or ``..``), contiguity and repeats, the
    sample count; dataset-wide unique keys and the schema of every sample; tars in the directory the
    manifest does not list; counts in = kept + rejected, the kinds and sources counted against the
    samples, the reasons counted against ``rejects.jsonl``, and that file's sha256.
    """
    index_file = index_path(path)
    report = VerifyReport(index_file)
    try:
        index = load_manifest(index_file)
    except (OSError, ValueError) as err:
        report.problems.append(str(err))
        return report
    root = index_file.parent
    keys: set[str] = set()
    kinds: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    listed = {entry["url"] for entry in index["shardlist"]}
    for entry in index["shardlist"]:
        shard = root / entry["url"]
        report.shards += 1
        if not shard.is_file():
            report.problems.append(f"{entry['url']}: listed in {index_file.name} but missing on disk")
            continue
        md5, sha, size = _hashes(shard)
        if size != entry["filesize"]:
            report.problems.append(f"{entry['url']}: size {size} bytes, manifest says {entry['filesize']} (truncated or replaced)")
        if md5 != entry["md5sum"] or ("sha256" in entry and sha != entry["sha256"]):
            report.problems.append(f"{entry['url']}: content hash differs from the manifest (corrupted or modified)")
        problems: list[str] = []
        samples = _samples_in_tar(shard, problems)
        report.problems.extend(problems)
        if len(samples) != entry["nsamples"]:
            report.problems.append(f"{entry['url']}: holds {len(samples)} samples, manifest says {entry['nsamples']}")
        for sample in samples:
            report.samples += 1
            if sample.key in keys:
                report.problems.append(f"{entry['url']}: key {sample.key!r} appears twice in the dataset")
            keys.add(sample.key)
            if "json" not in sample.files:
                report.problems.append(f"{entry['url']}: sample {sample.key!r} has no json member")
                continue
            try:
                sample.meta = json.loads(sample.files.pop("json"))
                if not isinstance(sample.meta, dict):
                    raise SchemaError(f"sample {sample.key!r}: json member is not an object")
                kinds[str(sample.meta.get("kind", ""))] += 1
                sources[str(sample.meta.get("source", ""))] += 1
                if check_schema:
                    validate_sample(sample)
            except (ValueError, SchemaError) as err:
                report.problems.append(f"{entry['url']}: {err}")
    for extra in sorted(p.name for p in root.glob(f"*{SHARD_SUFFIX}") if p.name not in listed):
        report.problems.append(f"{extra}: a shard in the dataset directory that {index_file.name} does not list "
                               "(left from another run?); remove it or reconvert with --overwrite")
    counts = index.get("counts") or {}
    if counts:
        _check_counts(report, index, counts, root, kinds, sources)
    return report


def _check_counts(report: VerifyReport, index: dict, counts: dict, root: Path, kinds: Counter, sources: Counter) -> None:
    name = report.index.name
    try:
        if counts["in"] != counts["kept"] + counts["rejected"]:
            report.problems.append(f"{name}: counts in {counts['in']} != kept {counts['kept']} + rejected {counts['rejected']}")
    except KeyError as err:
        report.problems.append(f"{name}: field 'counts.{err.args[0]}' is missing")
        return
    if counts["kept"] != sum(e["nsamples"] for e in index["shardlist"]):
        report.problems.append(f"{name}: counts.kept differs from the sum of shard nsamples")
    if report.problems:  # per-shard problems already explain any recount difference
        return
    for field_name, seen in (("kinds", kinds), ("sources", sources)):
        declared = counts.get(field_name)
        if declared is not None and dict(sorted(declared.items())) != dict(sorted(seen.items())):
            report.problems.append(f"{name}: counts.{field_name} {dict(declared)} differs from the samples' {dict(seen)}")
    rejects = root / REJECTS_NAME
    data = rejects.read_bytes() if rejects.is_file() else b""
    declared_sha = index.get("rejects_sha256")
    if declared_sha is not None and hashlib.sha256(data).hexdigest() != declared_sha:
        report.problems.append(f"{REJECTS_NAME}: sha256 differs from the manifest's rejects_sha256 (edited or replaced)")
    reasons: Counter[str] = Counter()
    lines = data.decode("utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        try:
            reasons[str(json.loads(line)["reason"])] += 1
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"{REJECTS_NAME}:{lineno}: not a reject record (JSON with a 'reason')")
            return
    if len(lines) != counts["rejected"]:
        report.problems.append(f"{REJECTS_NAME}: {len(lines)} lines, manifest counts {counts['rejected']} rejected")
    declared = counts.get("rejected_by_reason")
    if declared is not None and dict(sorted(declared.items())) != dict(sorted(reasons.items())):
        report.problems.append(f"{name}: counts.rejected_by_reason {dict(declared)} differs from {REJECTS_NAME}'s {dict(reasons)}")
