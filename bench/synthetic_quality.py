"""Usable-pair precision of the synthetic builder, measured against the sample scenes' ground truth.

    python bench/synthetic_quality.py                 # build from fresh sample data with the default config
    python bench/synthetic_quality.py --before        # the pre-issue-14 settings (biharmonic, 5 px, no verification)
    python bench/synthetic_quality.py --samples DIR --out DIR --json report.json

The sample generator knows every scene's plan, so each kept pair is judged against the truth, with no
model and nothing taken from the builder's own analysis:

- object: the instruction's referent picks exactly the edited object among the scene's true objects
  (positions, areas, rendered colours, mirror membership, categories from ``scenes.json``);
- remove: the fill is compared with the clean plate (the scene re-rendered without the object) inside
  the edit mask: mean CIE76 ΔE ≤ REMOVE_MEAN_DE and 90th percentile ≤ REMOVE_P90_DE (a blob of the
  object's colour or a smear shows in the tail). The JPEG floor (source vs raw render outside the
  object) is reported alongside;
- recolour: the object's pixels in the target are named the requested colour (colour table, share
  ≥ 0.5) and its luminance pattern is kept (Pearson r of CIELAB L inside the object ≥ 0.8);
- replace: needs an inpainting model (not run on CPU): counted as not judged.

A pair is usable when the object is right and its operation's check passes.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REMOVE_MEAN_DE = 5.0
REMOVE_P90_DE = 12.0
RECOLOUR_MIN_SHARE = 0.5
RECOLOUR_MIN_L_CORR = 0.8


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def _truth_target(meta: dict[str, Any], objects: list[dict[str, Any]], knowledge) -> list[int]:
    """ann_ids of the true objects the referent describes (correct when exactly the edited one)."""
    target = meta["target"]
    category = target["category"]
    referent = meta["referent"].lower()
    sel = meta["selector"]
    scenario = meta["scenario"]
    if scenario == "reasoning":
        return [o["ann_id"] for o in objects if o["category"] == category]
    # the referent names the category, or (when it was unique of its kind) the kind noun
    if category in referent:
        pool = [o for o in objects if o["category"] == category]
    else:
        noun = knowledge.noun(category)
        pool = [o for o in objects if knowledge.kind_of.get(o["category"]) and knowledge.noun(o["category"]) == noun]
    if scenario == "mirror":
        return [o["ann_id"] for o in pool if o["in_mirror"]]
    pool = [o for o in pool if not o["in_mirror"]]
    if not pool:
        return []
    if scenario == "left_right":
        xs = sorted(pool, key=lambda o: o["centroid"][0])
        pick = {"left": xs[0], "right": xs[-1], "middle": xs[len(xs) // 2] if len(xs) == 3 else None}[sel["position"]]
        return [pick["ann_id"]] if pick else []
    if scenario == "relative_size":
        by_area = sorted(pool, key=lambda o: o["area"])
        return [(by_area[-1] if sel["size"] in ("bigger", "biggest") else by_area[0])["ann_id"]]
    if scenario == "colour":
        return [o["ann_id"] for o in pool if o["colour"] == sel["colour"]]
    if scenario == "multiple_objects":
        xs = sorted(pool, key=lambda o: o["centroid"][0])
        if sel["side"] == "right":
            xs = xs[::-1]
        k = sel["ordinal"] - 1
        return [xs[k]["ann_id"]] if k < len(xs) else []
    raise ValueError(f"unknown scenario {scenario}")


def judge(out: Path, samples_root: Path, seed: int) -> dict[str, Any]:
    from pipeline.samples.coco import displayed_rgb
    from pipeline.samples.make import coco_images
    from pipeline.samples.scenes import clean_plate
    from pipeline.synthetic.colour_naming import delta_e, load_colour_table, rgb_to_lab
    from pipeline.synthetic.export import read_samples
    from pipeline.synthetic.knowledge import load_knowledge

    colours, knowledge = load_colour_table(), load_knowledge()
    images = {(i.split, i.file_name): i for i in coco_images(seed)}
    truth = {(t["split"], t["file_name"]): t for t in json.loads((samples_root / "scenes.json").read_text())
             if t.get("source") == "coco"}
    rows = []
    for key, meta, files in read_samples(out):
        split, rest = meta["source_id"].split("/", 1)
        file_name = rest.split("#")[0]
        img, scene_truth = images[(split, file_name)], truth[(split, file_name)]
        src, tgt, edit = _decode(files["src.png"]), _decode(files["tgt.png"]), _decode(files["mask.png"]) > 127
        ann_id = meta["target"]["ann_id"]
        described = _truth_target(meta, scene_truth["objects"], knowledge)
        row: dict[str, Any] = {"key": key, "scenario": meta["scenario"], "operation": meta["operation"],
                               "instruction": meta["instruction"], "object_ok": described == [ann_id]}
        obj_mask = img.rendered.masks[[o.ann_id for o in img.scene.objects].index(ann_id)]
        if meta["operation"] == "remove":
            plate = displayed_rgb(img, clean_plate(img.scene, ann_id).image)
            de = delta_e(tgt[edit], plate[edit])
            floor = delta_e(src[~edit], displayed_rgb(img, img.rendered.image)[~edit])
            row.update(fill_mean_de=round(float(de.mean()), 2), fill_p90_de=round(float(np.percentile(de, 90)), 2),
                       jpeg_floor_de=round(float(floor.mean()), 2))
            row["edit_ok"] = row["fill_mean_de"] <= REMOVE_MEAN_DE and row["fill_p90_de"] <= REMOVE_P90_DE
        elif meta["operation"] == "recolour":
            name, share = colours.name_pixels(tgt[obj_mask])
            l_src, l_tgt = rgb_to_lab(src[obj_mask])[:, 0], rgb_to_lab(tgt[obj_mask])[:, 0]
            corr = float(np.corrcoef(l_src, l_tgt)[0, 1]) if l_src.std() > 0 and l_tgt.std() > 0 else 0.0
            row.update(named=name, share=round(share, 3), l_corr=round(corr, 3))
            row["edit_ok"] = name == meta["new_colour"] and share >= RECOLOUR_MIN_SHARE and corr >= RECOLOUR_MIN_L_CORR
        else:
            row["edit_ok"] = None  # replace: judged only with an inpainting model
        row["usable"] = bool(row["object_ok"] and row["edit_ok"])
        rows.append(row)
    return summarise(rows)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in rows if r["edit_ok"] is not None]
    by = defaultdict(lambda: Counter())
    for r in judged:
        for group in (f"scenario:{r['scenario']}", f"operation:{r['operation']}"):
            by[group]["n"] += 1
            by[group]["usable"] += r["usable"]
    removes = [r for r in judged if r["operation"] == "remove"]
    return {
        "pairs": len(rows), "judged": len(judged), "usable": sum(r["usable"] for r in judged),
        "precision": round(sum(r["usable"] for r in judged) / len(judged), 4) if judged else None,
        "object_ok": sum(r["object_ok"] for r in rows),
        "remove_fill_mean_de_median": statistics.median(r["fill_mean_de"] for r in removes) if removes else None,
        "remove_fill_over_10": sum(r["fill_mean_de"] > 10 for r in removes),
        "jpeg_floor_de_median": statistics.median(r["jpeg_floor_de"] for r in removes) if removes else None,
        "by_group": {g: dict(c) for g, c in sorted(by.items())},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, help="a sample-data directory (default: make one with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="the sample data's seed")
    parser.add_argument("--out", type=Path, help="build directory (default: a temporary one)")
    parser.add_argument("--before", action="store_true", help="the builder's settings before issue 14")
    parser.add_argument("--json", type=Path, help="write the full report (every pair's verdict) here")
    args = parser.parse_args(argv)

    import torch

    from pipeline.synthetic.build import BuildInputs, build
    from pipeline.synthetic.config import SCENARIOS, SyntheticConfig

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-synthetic-quality-"))
    samples = args.samples
    if samples is None:
        from pipeline.samples import make_samples

        samples = make_samples(tmp / "samples", seed=args.seed).root
    overrides: dict[str, Any] = {"scenarios": {s: 1000 for s in SCENARIOS},
                                 "eval_sets": [str(Path(samples) / "reason_edit")]}
    if args.before:
        overrides.update(SyntheticConfig.BEFORE_ISSUE_14)
    cfg = SyntheticConfig(**overrides)
    out = args.out or tmp / "build"
    result = build(cfg, BuildInputs(input=str(samples)), out)
    report = judge(out, samples, args.seed)
    report["config"] = "before issue 14" if args.before else "default"
    report["kept"] = result["kept"]
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"{report['config']}: {report['pairs']} pairs kept, {report['judged']} judged, usable {report['usable']} "
          f"= {100 * (report['precision'] or 0):.1f} %; right object {report['object_ok']}/{report['pairs']}")
    print(f"removal fill ΔE vs clean plate: median {report['remove_fill_mean_de_median']}, > 10: "
          f"{report['remove_fill_over_10']}; JPEG floor median {report['jpeg_floor_de_median']}")
    for group, c in report["by_group"].items():
        print(f"  {group:<28} {c['usable']}/{c['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
