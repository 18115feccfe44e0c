"""Shard throughput of the convert flow per task runner (process, dask, ray) with 1 and 2 workers, and the
orchestration overhead per task against the library driver without Prefect.

    python bench/cluster_runners.py [--images 200] [--shard-size 2] [--workers 1 2] [--runners process dask ray]

Generates a COCO-Stuff layout (bench/convert.py's generator: 640×480 JPEGs and label maps), then converts it
into --images / --shard-size shards (100 by default):
  library   pipeline.convert.convert(reader, workers=N): the same shards, no Prefect (the baseline);
  <runner>  flows.convert.convert_segmentation(runner=<runner>, workers=N) under a temporary Prefect server:
            one task per shard; dask starts a LocalCluster of N worker processes, ray a local instance of N CPUs.
Overhead per task = (flow wall − library wall at the same N) / shards; its share = that difference / flow wall.
Engine start-up (cluster or Ray instance) is inside the flow's wall time, as a user pays it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _generator():
    spec = importlib.util.spec_from_file_location("bench_convert", HERE / "convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runners", nargs="+", default=["process", "dask", "ray"])
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.convert import convert_segmentation
    from pipeline.convert import convert
    from pipeline.sources import get_reader

    scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        _generator()(scratch, args.images)
        src, images = scratch / "cocostuff", str(scratch / "coco")
        shards = -(-args.images // args.shard_size)
        print(f"# {args.images} images → {shards} shards; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs (shared)")
        rows = []
        with prefect_test_harness(server_startup_timeout=120):
            for n in args.workers:
                reader = get_reader("cocostuff", str(src), "train2017", images=images)
                t0 = time.perf_counter()
                convert(reader, scratch / f"lib-{n}", shard_size=args.shard_size, workers=n)
                base = time.perf_counter() - t0
                rows.append(("library", n, base, None))
                for runner in args.runners:
                    t0 = time.perf_counter()
                    convert_segmentation(sources=[{"source": "cocostuff", "root": str(src), "splits": ["train2017"],
                                                   "options": {"images": images}}],
                                         output=str(scratch / f"{runner}-{n}"), shard_size=args.shard_size,
                                         workers=n, runner=runner, announce=False)
                    rows.append((runner, n, time.perf_counter() - t0, base))
        print("| runner | workers | wall s | shards/s | overhead ms/task | overhead share |")
        print("|---|---|---|---|---|---|")
        for runner, n, wall, base in rows:
            over = "" if base is None else f"{1000 * (wall - base) / shards:.0f}"
            share = "" if base is None else f"{100 * (wall - base) / wall:.0f} %"
            print(f"| {runner} | {n} | {wall:.1f} | {shards / wall:.1f} | {over} | {share} |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
