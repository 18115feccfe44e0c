"""Shard writer throughput against a raw byte copy of the same bytes, measured in one run.

    python bench/shards.py [--samples 2000] [--shard-size 1000] [--repeats 3] [--out DIR]

Each sample is a real-sized 640×480 JPEG (q90, natural-looking content), a small PNG mask and a json.
Baseline: the same bytes appended to one file and fsync'ed. Writer: pipeline.writer.write_shard
(schema validation, tar framing, md5 + sha256, fsync, rename, stats marker) plus the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.convert import plan_shards
from pipeline.manifest import finalize_dataset
from pipeline.provenance import Provenance
from pipeline.records import Sample, make_key
from pipeline.writer import write_shard


def make_payloads(n_unique: int = 64, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    out = []
    for i in range(n_unique):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 7) % 256, ((xx + yy) // 3) % 256], -1)
        img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        jpg = io.BytesIO()
        Image.fromarray(img).save(jpg, "JPEG", quality=90)
        mask = np.zeros((480, 640), np.uint8)
        mask[100 + i : 300 + i, 200:400] = 255
        png = io.BytesIO()
        Image.fromarray(mask, "L").save(png, "PNG")
        out.append((jpg.getvalue(), png.getvalue()))
    return out


def samples(payloads, n: int, start: int, stop: int):
    for i in range(start, stop):
        jpg, png = payloads[i % len(payloads)]
        meta = {"kind": "referring_mask", "source": "bench", "split": "train", "source_id": str(i),
                "sentences": [f"object {i}"], "no_target": False}
        yield Sample(make_key("bench", i), meta, {"jpg": jpg, "mask.png": png})


def raw_copy(payloads, n: int, path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for i in range(n):
            jpg, png = payloads[i % len(payloads)]
            f.write(jpg)
            f.write(png)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def hash_floor(payloads, n: int) -> float:
    """md5 + sha256 of the same bytes, in memory: what any writer that records both digests must pay."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    t0 = time.perf_counter()
    for i in range(n):
        for part in payloads[i % len(payloads)]:
            md5.update(part)
            sha.update(part)
    return time.perf_counter() - t0


def writer(payloads, n: int, shard_size: int, out: Path) -> float:
    t0 = time.perf_counter()
    plans = plan_shards("bench-train", n, shard_size)
    for plan in plans:
        write_shard(out / plan.name, samples(payloads, n, plan.start, plan.stop))
    finalize_dataset(out, name="bench-train", shard_names=[p.name for p in plans], provenance=Provenance.now("bench", {}))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    payloads = make_payloads()
    n = args.samples
    total_bytes = sum(len(j) + len(p) for j, p in (payloads[i % len(payloads)] for i in range(n)))
    scratch = Path(tempfile.mkdtemp(dir=args.out))
    raw_t, wr_t = [], []
    try:
        writer(payloads, 100, args.shard_size, scratch / "warmup")  # imports, schema models: paid once per process
        for r in range(args.repeats):  # alternate the order so that page-cache writeback hits both alike
            runs = [lambda: raw_t.append(raw_copy(payloads, n, scratch / f"raw-{r}.bin")),
                    lambda: wr_t.append(writer(payloads, n, args.shard_size, scratch / f"shards-{r}"))]
            for run in runs if r % 2 == 0 else runs[::-1]:
                run()
                os.sync()
            shutil.rmtree(scratch / f"shards-{r}")
            (scratch / f"raw-{r}.bin").unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    raw, wr = statistics.median(raw_t), statistics.median(wr_t)
    floor = statistics.median(hash_floor(payloads, n) for _ in range(args.repeats))
    mb = total_bytes / 1e6
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"payload: {n} samples, {mb:.1f} MB (mean {total_bytes / n / 1e3:.0f} KB/sample), median of {args.repeats}")
    print(f"raw copy : {n / raw:8.0f} samples/s  {mb / raw:7.1f} MB/s")
    print(f"writer   : {n / wr:8.0f} samples/s  {mb / wr:7.1f} MB/s")
    print(f"md5+sha256 alone (one core): {n / floor:8.0f} samples/s  {mb / floor:7.1f} MB/s")
    print(f"ratio writer/raw: {raw / wr:.2f} (goal ≥ 0.8); raw/hash-floor: {floor / raw:.2f}× — the digests alone take that long")


if __name__ == "__main__":
    main()
