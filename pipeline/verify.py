"""Check a dataset against its manifest: hashes, sizes, tar integrity, counts, keys and schemas."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.manifest import REJECTS_NAME, index_path, load_manifest
from pipeline.records import Sample
from pipeline.schema import SchemaError, validate_sample

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
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return md5.hexdigest(), sha.hexdigest(), size


def _samples_in_tar(path: Path, problems: list[str]) -> list[Sample]:
    """Group a shard's members into samples, reporting broken tars, dotted keys and non-contiguous members."""
    samples: list[Sample] = []
    current: Sample | None = None
    finished: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    problems.append(f"{path.name}: member {member.name!r} is not a regular file")
                    continue
                key, dot, ext = member.name.partition(".")
                if not dot or "/" in key:
                    problems.append(f"{path.name}: member {member.name!r} has no 'key.ext' form")
                    continue
                data = tar.extractfile(member).read()
                if current is None or current.key != key:
                    if key in finished:
                        problems.append(f"{path.name}: members of sample {key!r} are not contiguous")
                    if current is not None:
                        finished.add(current.key)
                        samples.append(current)
                    current = Sample(key, {}, {})
                if ext in current.files:
                    problems.append(f"{path.name}: sample {key!r} repeats member {ext!r}")
                current.files[ext] = data
    except (tarfile.TarError, EOFError, OSError) as err:
        problems.append(f"{path.name}: unreadable tar ({type(err).__name__}: {err}); rebuild this shard")
    if current is not None:
        samples.append(current)
    return samples


def verify_dataset(path: Path | str, *, check_schema: bool = True) -> VerifyReport:
    """Re-hash every shard and re-read it; every problem is a sentence naming the shard and what is wrong."""
    index_file = index_path(path)
    report = VerifyReport(index_file)
    try:
        index = load_manifest(index_file)
    except (OSError, ValueError) as err:
        report.problems.append(str(err))
        return report
    root = index_file.parent
    keys: set[str] = set()
    for entry in index["shardlist"]:
        shard = root / entry["url"]
        report.shards += 1
        if not shard.exists():
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
            if not check_schema:
                continue
            try:
                sample.meta = json.loads(sample.files.pop("json"))
                validate_sample(sample)
            except KeyError:
                report.problems.append(f"{entry['url']}: sample {sample.key!r} has no json member")
            except (ValueError, SchemaError) as err:
                report.problems.append(f"{entry['url']}: {err}")
    counts = index.get("counts", {})
    if counts:
        if counts["in"] != counts["kept"] + counts["rejected"]:
            report.problems.append(f"{index_file.name}: counts in {counts['in']} != kept {counts['kept']} + rejected {counts['rejected']}")
        if counts["kept"] != sum(e["nsamples"] for e in index["shardlist"]):
            report.problems.append(f"{index_file.name}: counts.kept differs from the sum of shard nsamples")
        rejects = root / REJECTS_NAME
        n_lines = len(rejects.read_text().splitlines()) if rejects.exists() else 0
        if n_lines != counts["rejected"]:
            report.problems.append(f"{REJECTS_NAME}: {n_lines} lines, manifest counts {counts['rejected']} rejected")
    return report
