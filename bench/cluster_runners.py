"""Shard throughput of the convert flow per task runner (process, dask, ray) with 1 and 2 workers, and the
orchestration overhead per task, against the library driver without Prefect and measured inside the run.

    python bench/cluster_runners.py [--images 200] [--shard-size 2] [--workers 1 2] [--runners process dask ray]
                                    [--data DIR]

Generates a COCO-Stuff layout (bench/convert.py's generator: 640×480 JPEGs and label maps; kept in --data when
given, so a rerun skips it), then converts it into --images / --shard-size shards (100 by default):
  library   pipeline.convert.convert(reader, workers=N): the same shards, no Prefect (the baseline);
  <runner>  flows.convert.convert_segmentation(runner=<runner>, workers=N) under a temporary Prefect server:
            one task per shard; dask starts a LocalCluster of N worker processes, ray a local instance of N CPUs.

Two measures of the orchestration overhead per task:
  vs library  (flow wall − library wall at the same N) / shards, and its share of the flow wall: everything a
              user pays for Prefect, fixed costs included (flow runs, engine start-up, artifacts, manifest);
  in the run  read back from the server after the run: each task run's start and end, and the converter's own
              time inside the task (the task's "in N s" log line). `task ms` = task-run span − work (state
              changes, logging, result handling inside the task run); `dispatch ms` = worker time in the task
              phase (first task start → last task end, × N) not spent in a task run, per task (submission,
              pickling, runner scheduling); `per task ms` = the sum: what one more shard costs besides its work.
              `start s` = inner flow start → first task start (engine start-up: process spawn, LocalCluster,
              Ray instance, plus the plan under the lock) and `end s` = last task end → inner flow end.
  `steady share` = per task / (per task + work per task): the share of orchestration once started, which
  does not depend on the shard count; at another shard size scale the work per task.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = re.compile(r"\) in ([0-9.]+) s$")


def _generator():
    spec = importlib.util.spec_from_file_location("bench_convert", HERE / "convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def task_timings(flow_run_id: str, n_tasks: int, wait_s: float = 30.0) -> dict[str, float]:
    """The inner flow run's span, its task runs' spans and the work each task logged, read from the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        work: dict[str, float] = {}
        deadline = time.monotonic() + wait_s  # worker processes send their logs in batches: wait for the last
        while True:
            logs, offset = [], 0
            while batch := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                            limit=200, offset=offset):
                logs += batch
                offset += len(batch)
            work = {str(log.task_run_id): float(m.group(1)) for log in logs
                    if log.task_run_id and (m := WORK.search(log.message))}
            if len(work) >= n_tasks or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    runs = [r for r in runs if r.start_time and r.end_time]
    if len(runs) != n_tasks:
        raise RuntimeError(f"flow run {flow_run_id}: {len(runs)} finished task runs, expected {n_tasks}")
    spans = {str(r.id): (r.start_time.timestamp(), r.end_time.timestamp()) for r in runs}
    first, last = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
    in_task = [e - s - work[i] for i, (s, e) in spans.items() if i in work]
    return {
        "n": len(runs), "n_work": len(work), "work": sum(work.values()), "span": sum(e - s for s, e in spans.values()),
        "task_over": statistics.fmean(in_task) if in_task else float("nan"),
        "phase": last - first, "start": first - flow_run.start_time.timestamp(),
        "end": flow_run.end_time.timestamp() - last,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runners", nargs="+", default=["process", "dask", "ray"])
    parser.add_argument("--data", type=Path, help="keep the generated input here (reused when it holds --images)")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.convert import convert_segmentation
    from pipeline.convert import convert
    from pipeline.manifest import load_manifest
    from pipeline.sources import get_reader

    scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    data = args.data or scratch / "input"
    try:
        src, images = data / "cocostuff", data / "coco"
        maps = src / "stuffthingmaps_trainval2017" / "train2017"
        if not maps.is_dir() or sum(1 for _ in maps.glob("*.png")) != args.images:
            shutil.rmtree(data, ignore_errors=True)
            _generator()(data, args.images)
        shards = -(-args.images // args.shard_size)
        print(f"# {args.images} images → {shards} shards of {args.shard_size}; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs (shared); load average {_load()} at the start")
        rows = []
        with prefect_test_harness(server_startup_timeout=120):
            for n in args.workers:
                reader = get_reader("cocostuff", str(src), "train2017", images=str(images))
                t0 = time.perf_counter()
                convert(reader, scratch / f"lib-{n}", shard_size=args.shard_size, workers=n)
                base = time.perf_counter() - t0
                shutil.rmtree(scratch / f"lib-{n}", ignore_errors=True)
                rows.append(("library", n, base, None, None, _load()))
                for runner in args.runners:
                    out = scratch / f"{runner}-{n}"
                    t0 = time.perf_counter()
                    paths = convert_segmentation(
                        sources=[{"source": "cocostuff", "root": str(src), "splits": ["train2017"],
                                  "options": {"images": str(images)}}],
                        output=str(out), shard_size=args.shard_size, workers=n, runner=runner, announce=False)
                    wall = time.perf_counter() - t0
                    timing = task_timings(load_manifest(paths[0])["provenance"]["flow_run_id"], shards)
                    shutil.rmtree(out, ignore_errors=True)
                    rows.append((runner, n, wall, base, timing, _load()))
        print("\n| runner | workers | wall s | shards/s | vs library ms/task | share | start s | end s "
              "| work ms/task | task ms | dispatch ms | per task ms | steady share | load 1/5/15 min |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for runner, n, wall, base, t, load in rows:
            if base is None:
                print(f"| {runner} | {n} | {wall:.1f} | {shards / wall:.1f} | | | | | {1000 * wall * n / shards:.0f} "
                      f"(wall × N) | | | | | {load} |")
                continue
            work = t["work"] / max(t["n_work"], 1)
            dispatch = (t["phase"] * n - t["span"]) / t["n"]
            per_task = t["task_over"] + dispatch
            print(f"| {runner} | {n} | {wall:.1f} | {shards / wall:.1f} | {1000 * (wall - base) / shards:.0f} "
                  f"| {100 * (wall - base) / wall:.0f} % | {t['start']:.1f} | {t['end']:.1f} | {1000 * work:.0f} "
                  f"| {1000 * t['task_over']:.0f} | {1000 * dispatch:.0f} | {1000 * per_task:.0f} "
                  f"| {100 * per_task / (per_task + work):.1f} % | {load} |")
            if t["n_work"] != t["n"]:
                print(f"  ({runner}/{n}: the work line of {t['n'] - t['n_work']} task(s) did not reach the server)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
