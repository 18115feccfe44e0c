"""Summarise datasets from their manifests: what `smartedit shards inspect` shows."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.shards import INDEX_NAME, find_manifests, iter_samples, load_manifest


def summarize(index_file: Path) -> dict[str, Any]:
    index = load_manifest(index_file)
    counts = index.get("counts", {})
    return {
        "dataset": index.get("name"),
        "index": str(index_file),
        "shards": len(index["shardlist"]),
        "samples": sum(e["nsamples"] for e in index["shardlist"]),
        "bytes": sum(e["filesize"] for e in index["shardlist"]),
        "kinds": counts.get("kinds", {}),
        "sources": counts.get("sources", {}),
        "in": counts.get("in"),
        "rejected": counts.get("rejected", 0),
        "rejected_by_reason": counts.get("rejected_by_reason", {}),
        "provenance": index.get("provenance", {}),
    }


def first_samples(index_file: Path, n: int) -> list[dict[str, Any]]:
    """Metadata of the first ``n`` samples: key, members with sizes, and the json member."""
    out: list[dict[str, Any]] = []
    if n <= 0:
        return out
    for raw in iter_samples(index_file):
        members = {k: len(v) for k, v in raw.items() if not k.startswith("__")}
        item: dict[str, Any] = {"key": raw["__key__"], "shard": Path(raw["__url__"]).name, "members": members}
        if "json" in raw:
            item["json"] = json.loads(raw["json"])
        out.append(item)
        if len(out) >= n:
            break
    return out


def inspect_path(path: Path | str) -> list[dict[str, Any]]:
    """One summary per dataset found at or below ``path``."""
    manifests = find_manifests(path)
    if not manifests:
        raise FileNotFoundError(f"{path}: no {INDEX_NAME} found at or below it")
    return [summarize(m) for m in manifests]


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_counter(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in Counter(c).most_common()) or "-"


def format_table(summaries: list[dict[str, Any]]) -> str:
    """A readable table: one row per dataset, then rejects and provenance per dataset."""
    headers = ("dataset", "shards", "samples", "bytes", "kinds", "sources", "rejected")
    rows = [
        (s["dataset"], str(s["shards"]), str(s["samples"]), _fmt_bytes(s["bytes"]), _fmt_counter(s["kinds"]),
         _fmt_counter(s["sources"]), str(s["rejected"]))
        for s in summaries
    ]
    total = ("TOTAL", str(sum(s["shards"] for s in summaries)), str(sum(s["samples"] for s in summaries)),
             _fmt_bytes(sum(s["bytes"] for s in summaries)), "", "", str(sum(s["rejected"] for s in summaries)))
    widths = [max(len(r[i]) for r in [headers, *rows, total]) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(headers), line(tuple("-" * w for w in widths)), *map(line, rows)]
    if len(rows) > 1:
        out.append(line(total))
    for s in summaries:
        p = s["provenance"]
        out.append("")
        out.append(f"{s['dataset']}  ({s['index']})")
        out.append(f"  rejects by reason: {_fmt_counter(s['rejected_by_reason'])}")
        out.append(f"  provenance: source={p.get('source')} spec_hash={str(p.get('spec_hash'))[:12]} "
                   f"code={p.get('code_version')} created={p.get('created')} flow_run={p.get('flow_run_id') or '-'}")
    return "\n".join(out)
