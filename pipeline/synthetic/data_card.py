"""The markdown data card and the per-stage yield table of a synthetic build."""

from __future__ import annotations

from typing import Any

from pipeline.synthetic.config import REASON_EDIT_FOLDERS, SCENARIOS


def merge_yields(parts: list[dict[str, dict[str, Any]]], order: list[str]) -> list[dict[str, Any]]:
    """Sum stage counters over the plan and the shards; rows in pipeline ``order`` (stage names).

    Row: {stage, in, out, dropped, dropped_by_reason, seconds, fan_out, yield}. ``yield`` = out / in for
    one-to-one stages; a fan-out stage (one scene → several candidates) has none, as its ratio is not a
    share of anything.
    """
    total: dict[str, dict[str, Any]] = {}
    for part in parts:
        for stage, c in part.items():
            t = total.setdefault(stage, {"in": 0, "out": 0, "dropped": {}, "seconds": 0.0, "fan_out": False})
            t["in"] += c["in"]
            t["out"] += c["out"]
            t["seconds"] += c.get("seconds", 0.0)
            t["fan_out"] = t["fan_out"] or bool(c.get("fan_out"))
            for reason, n in c.get("dropped", {}).items():
                t["dropped"][reason] = t["dropped"].get(reason, 0) + n
    rows = []
    for name in [s for s in order if s in total] + sorted(s for s in total if s not in order):
        t = total[name]
        dropped = dict(sorted(t["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))
        rows.append({"stage": name, "in": t["in"], "out": t["out"], "dropped": sum(dropped.values()),
                     "dropped_by_reason": dropped, "seconds": round(t["seconds"], 4), "fan_out": t["fan_out"],
                     "yield": round(t["out"] / t["in"], 4) if t["in"] and not t["fan_out"] else None})
    return rows


def _top_reasons(row: dict[str, Any], n: int = 3) -> str:
    items = list(row["dropped_by_reason"].items())
    text = ", ".join(f"{k} {v}" for k, v in items[:n])
    return text + (f", … ({len(items) - n} more)" if len(items) > n else "")


def _yield_cell(row: dict[str, Any]) -> str:
    if row["fan_out"]:
        return f"fan-out ({row['out'] / row['in']:.2f} per in)" if row["in"] else "fan-out"
    return _percent(row["yield"])


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


THRESHOLDS = ("position_margin", "size_ratio", "colour_min_share", "mask_min_area", "mask_max_area", "dilate_px",
              "remove_dilate_px", "best_of", "remove_ring_max_de", "remove_max_object_like", "recolour_min_l_corr",
              "clip_crop_min", "detector_threshold", "min_edit_strength", "background_tolerance", "clip_direction_min",
              "sam_min_iou", "phash_max_distance")


def _measured(calibration: dict[str, Any] | None) -> list[str]:
    if not calibration:
        return ["## Measured precision", "",
                "Not measured yet: `smartedit synthetic label DIR -o label.html` (the judging page), label the pairs, "
                "then `smartedit synthetic calibrate LABELS --dataset DIR` (pipeline/synthetic/calibrate.py).", ""]
    m = calibration["measured"]

    def row(name: str, p: dict[str, Any]) -> str:
        value = "" if p["precision"] is None else f"{100 * p['precision']:.1f} %"
        return f"| {name} | {p['labelled']} | {p['good']} | {value} |"

    lines = ["## Measured precision (from labels)", "",
             f"{calibration['labels']} labels; kept pairs judged good / labelled.", "",
             "| group | labelled | good | precision |", "|---|---|---|---|", row("all kept pairs", m["all"]),
             *[row(f"scenario {k}", v) for k, v in m["scenario"].items()],
             *[row(f"operation {k}", v) for k, v in m["operation"].items()], ""]
    if calibration["thresholds"]:
        lines += [f"Thresholds for {100 * calibration['target_precision']:.0f} % precision:", "",
                  "| setting | score | value | labelled pairs passing | precision |", "|---|---|---|---|---|",
                  *[f"| {f} | {t['score']} ({t['operation']}) | {t['threshold']} | {t['passing']} / {t['labelled']} "
                    f"| {100 * t['precision']:.1f} % |" for f, t in calibration["thresholds"].items()], ""]
    return lines


def refresh_data_card(output) -> str:
    """Rewrite ``output/DATA_CARD.md`` from the manifest, the plan and ``calibration.json`` (when labelled)."""
    import json

    from pipeline.storage import as_path
    from pipeline.writer import atomic_write_text

    output = as_path(output)  # local or a bucket URL
    index = json.loads((output / "shardindex.json").read_text())
    plan = json.loads((output / "plan.json").read_text())
    calibration = output / "calibration.json"
    text = data_card(index, plan, index.get("yields", []), index.get("kept_by_scenario", {}),
                     index.get("kept_by_operation", {}),
                     json.loads(calibration.read_text()) if calibration.exists() else None)
    atomic_write_text(output / "DATA_CARD.md", text)
    return text


def data_card(index: dict[str, Any], plan: dict[str, Any], yields: list[dict[str, Any]],
              kept_by_scenario: dict[str, int], kept_by_operation: dict[str, int],
              calibration: dict[str, Any] | None = None) -> str:
    cfg = plan["spec"]["config"]
    inputs = plan["spec"]["inputs"]
    counts = index["counts"]
    lines = [
        "# Synthetic edit pairs (SmartEdit complex understanding and reasoning)", "",
        "Edit pairs for the six Reason-Edit categories, built from instance annotations: a target singled out by "
        "position, size, colour, mirror, ordinal or world knowledge; replaced, removed or recoloured inside its mask; "
        "the background pasted back bit-exactly.", "",
        "## Sources", "",
        f"- input: `{inputs['input']}`" + (f" (images `{inputs['images']}`)" if inputs.get("images") else ""),
        *[f"- annotations: `{s}`" for s in plan.get("sources", [])],
        f"- ground-truth scenes: `{plan['scenes_json']}`" if plan.get("scenes_json") else "- ground-truth scenes: none",
        (f"- evaluation sets kept out (pHash ≤ {cfg['phash_max_distance']} bits of any flip / crop variant, and "
         "MagicBrush COCO image ids): " + (", ".join(f"`{e}`" for e in cfg["eval_sets"]) or "none"))
        if cfg.get("leakage_guard", True) else "- leakage guard: **off** (leakage_guard=False)",
        f"- images available: {plan.get('images_available', '?')}; seed {cfg['seed']}",
        f"- mirror regions from: {', '.join(plan.get('mirror_sources', [])) or '?'}",
        *[f"- note: {n}" for n in plan.get("notes", [])], "",
        "## Models", "",
        f"- masks: {'SAM ' + cfg['sam_type'] + ' `' + cfg['sam_checkpoint'] + '`' if cfg.get('sam_checkpoint') else 'annotation masks'}",
        f"- editor: {'inpainting `' + cfg['inpaint_dir'] + '`' if cfg.get('inpaint_dir') else 'CPU (CIELAB recolour, OpenCV removal; replace needs an inpainting model)'}",
        f"- verification: {'on' if cfg.get('verify', False) else 'off'}, best of {cfg.get('best_of', 1)}; detector "
        f"{'`' + cfg['detector_dir'] + '`' if cfg.get('detector_dir') else 'off (CPU rules)'}",
        f"- CLIP direction filter: {'`' + cfg['clip_dir'] + '`' if cfg.get('clip_dir') else 'off'}",
        f"- LLM paraphrases: {'`' + cfg['llm_dir'] + '`' if cfg.get('llm_dir') else 'off (templates only)'}", "",
        "## Counts per scenario", "",
        "| scenario | Reason-Edit folder | quota | planned | kept |", "|---|---|---|---|---|",
        *[f"| {s} | {REASON_EDIT_FOLDERS[s]} | {cfg['scenarios'].get(s, 0)} | {plan.get('planned_by_scenario', {}).get(s, 0)} "
          f"| {kept_by_scenario.get(s, 0)} |" for s in SCENARIOS],
        "", "Kept per operation: " + (", ".join(f"{k} {v}" for k, v in sorted(kept_by_operation.items())) or "none"), "",
        "## Yield per stage", "", "| stage | in | out | dropped | yield | top drop reasons |", "|---|---|---|---|---|---|",
        *[f"| {r['stage']} | {r['in']} | {r['out']} | {r['dropped']} | {_yield_cell(r)} | {_top_reasons(r)} |"
          for r in yields],
        "", f"Records in {counts['in']}, kept {counts['kept']}, dropped {counts['rejected']}.", "",
        "## Drops by reason", "", "| reason | count |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in counts["rejected_by_reason"].items()],
        "", "Every drop, with its location and detail: `rejects.jsonl`. Candidates that failed verification are "
        "labelled negatives in `negatives/` (own shards and manifest).", "",
        *_measured(calibration),
        "## Thresholds", "", "| setting | value |", "|---|---|",
        *[f"| {k} | {cfg[k]} |" for k in THRESHOLDS if k in cfg],
        "",
    ]
    return "\n".join(lines)
