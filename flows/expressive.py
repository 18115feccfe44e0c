"""`expressive-instructions`: MGIE's expressive instructions for edit-pair shards (model/mgie/expressive.py).

Thin: one task per input shard (skipped when its completion marker exists, so a rerun resumes), each writing a
sidecar ``OUT/<dataset>/<shard>.expressive.jsonl`` keyed by sample key; the flow publishes a table of counts
(in = kept + rejected by reason). The frozen LLaVA and the summariser load once per process. On a GPU each
shard task holds one slot of the `gpu` global concurrency limit.

    prefect deployment run expressive-instructions/expressive-instructions -p inputs='["/data/shards/instructpix2pix"]' \
        -p output=/data/shards/expressive -p llava_dir=/models/llava-7b-v1-hf -p summariser_dir=/models/flan-t5-xl
    smartedit expressive --input .demo/shards/magicbrush --out .demo/expressive --llava ... --summariser ...
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import artifact_key, gpu_slot, is_io_error


@functools.lru_cache(maxsize=2)
def _models(config_json: str):
    from model.mgie.expressive import ExpressiveConfig, build_models

    return build_models(ExpressiveConfig(**json.loads(config_json)))


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=is_io_error, task_run_name="express-{shard_name}",
      cache_policy=None)
def express_shard_task(shard: str, shard_name: str, out_dir: str, config_json: str) -> dict[str, Any]:
    """One shard → its sidecar and stats (no tensors returned)."""
    from model.mgie.expressive import ExpressiveConfig, express_shard

    config = ExpressiveConfig(**json.loads(config_json))
    with gpu_slot(config.device):
        describer, summariser = _models(config_json)
        stats = express_shard(shard, out_dir, describer, summariser, config)
    return {k: v for k, v in stats.items() if k != "config"}


@flow(name="expressive-instructions", log_prints=False)
def expressive_instructions(
    inputs: list[str],
    output: str,
    llava_dir: str,
    summariser_dir: str,
    device: str = "cpu",
    max_new_tokens: int = 1024,
) -> dict[str, Any]:
    """inputs: edit-pair datasets (shardindex.json or directories holding them); output: the sidecar root (pass it
    to `smartedit train --model mgie --expressive`). Returns totals and the per-shard stats."""
    import dataclasses

    from prefect.artifacts import create_table_artifact

    from model.mgie.expressive import ExpressiveConfig, dataset_name, shard_urls
    from pipeline.manifest import find_manifests

    config = ExpressiveConfig(llava_dir=llava_dir, summariser_dir=summariser_dir, device=device,
                              max_new_tokens=max_new_tokens)
    config_json = json.dumps(dataclasses.asdict(config))
    jobs = []
    for root in inputs:
        indexes = find_manifests(root)
        if not indexes:
            raise ValueError(f"expressive-instructions: {root} holds no shardindex.json; convert edit pairs first")
        jobs += [(str(shard), str(Path(output) / dataset_name(index))) for index in indexes for shard in shard_urls(index)]
    results = [express_shard_task(shard, Path(shard).name, out_dir, config_json) for shard, out_dir in jobs]
    rows = [{"shard": Path(r["shard"]).name, "in": r["in"], "kept": r["kept"], "skipped": r["skipped"],
             "rejected": ", ".join(f"{k}={v}" for k, v in sorted(r["rejected"].items())) or "-"} for r in results]
    create_table_artifact(key=artifact_key("expressive", "instructions"), table=rows,
                          description=f"MGIE expressive instructions → {output}")
    totals = {"in": sum(r["in"] for r in results), "kept": sum(r["kept"] for r in results),
              "skipped_shards": sum(bool(r["skipped"]) for r in results)}
    get_run_logger().info("expressive instructions: %s", totals)
    return {"output": output, **totals, "shards": results}
