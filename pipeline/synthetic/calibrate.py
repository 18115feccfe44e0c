"""Calibration from human labels: measured precision, and thresholds that reach a target precision.

    smartedit synthetic calibrate LABELS... --dataset OUT [--target-precision 0.9]

LABELS are the judging page's exports (``format: smartedit-ins-align-judgements-v1``, one verdict per
``key`` with ``follows: true|false``; the page is the evaluation's Ins-align page filled with the
pairs from `labelling_entries`) or a plain ``{"labels": {key: true|false}}`` file. Kept pairs and
labelled negatives (``OUT/negatives``) are both used: the negatives are the pairs the current thresholds
refused, so a looser threshold can be judged too.

For each verification score (removal ring ΔE, object likeness, recolour shading, CLIP crop and
direction scores) and its operation, the loosest threshold whose labelled pairs reach the target
precision is chosen (at least ``min_support`` labelled pairs must pass it). The result,
``OUT/calibration.json``, holds the thresholds as SyntheticConfig fields and the measured precision
of the kept pairs per scenario and per operation; the data card shows it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.storage import as_path

log = logging.getLogger(__name__)

JUDGEMENTS_FORMAT = "smartedit-ins-align-judgements-v1"  # the judging page's export (model/evaluation/judging.py)
CALIBRATION_NAME = "calibration.json"


@dataclass(frozen=True)
class Rule:
    """A verification score, the operation it applies to, the config field it sets and its direction."""

    score: str
    operation: str
    field: str
    higher_is_better: bool


RULES = (
    Rule("ring_de_p90", "remove", "remove_ring_max_de", False),
    Rule("object_like", "remove", "remove_max_object_like", False),
    Rule("luminance_corr", "recolour", "recolour_min_l_corr", True),
    Rule("clip_crop", "replace", "clip_crop_min", True),
    Rule("clip_direction", "*", "clip_direction_min", True),
)


def load_labels(paths: list[Path | str]) -> dict[str, bool]:
    """key → good, from judging-page exports or ``{"labels": {key: bool}}``; several judges: majority (ties bad)."""
    votes: dict[str, list[bool]] = {}
    for raw in paths:
        path = Path(raw)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read labels ({err}); expected a judging-page export or {{\"labels\": ...}}") from err
        if isinstance(doc, dict) and doc.get("format") == JUDGEMENTS_FORMAT:
            items = [(j.get("key"), j.get("follows")) for j in doc.get("judgements", [])]
        elif isinstance(doc, dict) and isinstance(doc.get("labels"), dict):
            items = list(doc["labels"].items())
        else:
            raise ValueError(f"{path}: field 'format' is not {JUDGEMENTS_FORMAT!r} and there is no 'labels' object; "
                             "export the judging page or write {\"labels\": {\"<sample key>\": true}}")
        for i, (key, good) in enumerate(items):
            if not isinstance(good, bool) or not key:
                raise ValueError(f"{path}: label {i} ({key!r}) must map a sample key to true or false, got {good!r}")
            votes.setdefault(str(key), []).append(good)
    return {k: sum(v) * 2 > len(v) for k, v in votes.items()}


def _labelled_samples(dataset: Path, labels: dict[str, bool]) -> list[dict[str, Any]]:
    from pipeline.synthetic.export import read_samples

    rows = []
    for sub, negative in ((dataset, False), (dataset / "negatives", True)):
        if not (sub / "shardindex.json").exists():
            continue
        for key, meta, _ in read_samples(sub):
            if key in labels:
                rows.append({"key": key, "good": labels[key], "negative": negative, "scenario": meta["scenario"],
                             "operation": meta["operation"], "scores": meta.get("scores", {})})
    return rows


def _precision(rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = sum(r["good"] for r in rows)
    return {"labelled": len(rows), "good": good, "precision": round(good / len(rows), 4) if rows else None}


def choose_threshold(values: list[tuple[float, bool]], higher_is_better: bool, target: float,
                     min_support: int) -> dict[str, Any] | None:
    """The loosest threshold on (score, good) pairs whose passing pairs reach ``target`` precision."""
    ordered = sorted(values, key=lambda v: -v[0] if higher_is_better else v[0])  # best first
    best = None
    good = 0
    for n, (value, is_good) in enumerate(ordered, start=1):
        good += is_good
        # ties: a threshold passes every pair with an equal score, so only decide after the last of them
        if n < len(ordered) and ordered[n][0] == value:
            continue
        if n >= min_support and good / n >= target:
            best = {"threshold": value, "passing": n, "precision": round(good / n, 4)}
    return best


def calibrate(dataset: Path | str, label_files: list[Path | str], target_precision: float = 0.9,
              min_support: int = 5) -> dict[str, Any]:
    """Write ``dataset/calibration.json`` and refresh the data card; returns the calibration."""
    from pipeline.synthetic.data_card import refresh_data_card
    from pipeline.writer import atomic_write_text

    dataset = as_path(dataset)  # local or a bucket URL
    if not (dataset / "shardindex.json").exists():
        raise FileNotFoundError(f"--dataset {dataset}: no shardindex.json; pass the build-synthetic output directory")
    if not 0 < target_precision <= 1:
        raise ValueError(f"--target-precision {target_precision}: must be in (0, 1]")
    labels = load_labels(label_files)
    rows = _labelled_samples(dataset, labels)
    if not rows:
        raise ValueError(f"{dataset}: none of the {len(labels)} labelled keys is a sample of this dataset or its negatives")
    kept = [r for r in rows if not r["negative"]]
    thresholds: dict[str, Any] = {}
    for rule in RULES:
        values = [(float(r["scores"][rule.score]), r["good"]) for r in rows
                  if rule.score in r["scores"] and rule.operation in ("*", r["operation"])]
        chosen = choose_threshold(values, rule.higher_is_better, target_precision, min_support) if values else None
        if chosen is not None:
            thresholds[rule.field] = {"score": rule.score, "operation": rule.operation, **chosen,
                                      "labelled": len(values)}
    result = {
        "target_precision": target_precision, "labels": len(labels), "labelled_samples": len(rows),
        "thresholds": thresholds,
        "config_overrides": {f: t["threshold"] for f, t in thresholds.items()},
        "measured": {
            "all": _precision(kept),
            "scenario": {s: _precision([r for r in kept if r["scenario"] == s]) for s in sorted({r["scenario"] for r in kept})},
            "operation": {o: _precision([r for r in kept if r["operation"] == o]) for o in sorted({r["operation"] for r in kept})},
        },
    }
    atomic_write_text(dataset / CALIBRATION_NAME, json.dumps(result, indent=1))
    refresh_data_card(dataset)
    log.info("calibrated %s from %d labelled samples", dataset, len(rows))
    return result


def labelling_entries(dataset: Path | str, image_dir: Path | str, limit: int | None = None) -> list[dict[str, Any]]:
    """Kept pairs and negatives as judging-page entries (key, seed 0, category, group, instruction, images).

    The images are written as PNGs under ``image_dir``; the CLI passes these dicts to the evaluation's
    `write_judging_page` (JudgingEntry fields), whose export `calibrate` reads.
    """
    from pipeline.synthetic.export import read_samples

    dataset, image_dir = as_path(dataset), Path(image_dir)  # the page and its images are local files
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for sub, group in ((dataset, "kept"), (dataset / "negatives", "negative")):
        if not (sub / "shardindex.json").exists():
            continue
        for key, meta, files in read_samples(sub, limit=limit):
            src, tgt = image_dir / f"{key}.src.png", image_dir / f"{key}.tgt.png"
            src.write_bytes(files["src.png"])
            tgt.write_bytes(files["tgt.png"])
            entries.append({"key": key, "seed": 0, "category": f"{meta['scenario']}/{meta['operation']}",
                            "group": group, "instruction": meta["instruction"], "input_image": src,
                            "output_image": tgt})
    return entries
