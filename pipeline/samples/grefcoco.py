"""gRefCOCO: ``refer/grefcoco/grefs(unc).json`` + ``refer/grefcoco/instances.json``.

Like the refer refs, but ``ann_id`` and ``category_id`` are lists: single-target, multi-target
(2–3 objects: several of one category or two categories) and no-target refs (an expression naming
something absent; ``ann_id == [-1]``, ``no_target: true``, and ``category_id`` [-1] — one ref uses
``[]``, both forms being seen in the wild). ``file_name`` is the image's train2014 name, not a file
under coco/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import expressions as ex
from pipeline.samples.coco import CocoImage, instances_json
from pipeline.samples.palette import COLOUR_NAMES
from pipeline.samples.quirks import write_json
from pipeline.samples.refer import image_splits
from pipeline.samples.scenes import COMMON
from pipeline.samples.shapes import plural

MAX_REFS = 42


def _targets(img: CocoImage, rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """(expression, object indices) candidates of one image; [] indices = no target."""
    objs = img.scene.objects
    out: list[tuple[str, list[int]]] = []
    plain = [i for i, o in enumerate(objs) if not o.crowd and not o.in_mirror]
    for i in plain[:2]:
        texts = ex.expressions(ex.context(img.rendered, i), "unc")
        if texts:
            out.append((texts[int(rng.integers(len(texts)))], [i]))
    by_cat: dict[str, list[int]] = {}
    for i in plain:
        by_cat.setdefault(objs[i].category, []).append(i)
    for cat, idxs in by_cat.items():
        if len(idxs) >= 2:
            word = "both" if len(idxs) == 2 else f"all {ex.NUMBER_WORDS[len(idxs)]}"
            out.append((f"{word} {plural(cat)}", idxs))
            if len(idxs) == 3:
                left_right = sorted(idxs, key=lambda i: objs[i].cx)
                out.append((f"{plural(cat)} on the left and right", [left_right[0], left_right[-1]]))
    cats = list(by_cat)
    if len(cats) >= 2:
        a, b = by_cat[cats[0]][0], by_cat[cats[1]][0]
        if len(by_cat[cats[0]]) == 1 and len(by_cat[cats[1]]) == 1:
            out.append((f"the {cats[0]} and the {cats[1]}", [a, b]))
    absent = [c for c in COMMON if c not in by_cat]
    colour = str(rng.choice(COLOUR_NAMES))
    out.append((f"the {colour} {absent[int(rng.integers(len(absent)))]}", []))
    return out


def write(root: Path, images: list[CocoImage], rng: np.random.Generator) -> dict[str, Any]:
    """Write grefs(unc).json and instances.json under `root` (= out_dir/refer/grefcoco)."""
    train = [i for i in images if i.split == "train2017"]
    splits = image_splits(train, "unc", rng)
    candidates = [(img, text, idxs) for img in train for text, idxs in _targets(img, rng)]
    keep = sorted(int(i) for i in rng.choice(len(candidates), size=min(MAX_REFS, len(candidates)), replace=False))
    # Guarantee both kinds the converters must handle, whatever the draw.
    for kind in (lambda c: len(c[2]) >= 2, lambda c: not c[2]):
        if not any(kind(candidates[k]) for k in keep):
            keep = sorted(keep[1:] + [next(k for k, c in enumerate(candidates) if kind(c))])
    refs, sent_id, empty_list_done = [], 0, False
    for ref_id, k in enumerate(keep):
        img, text, idxs = candidates[k]
        objs = [img.scene.objects[i] for i in idxs]
        raw, sent, tokens = ex.raw_and_sent(text, rng)
        no_target = not objs
        category_id = [int(o.category_id) for o in objs] or ([] if not empty_list_done else [-1])
        empty_list_done = empty_list_done or no_target
        refs.append({
            "sent_ids": [sent_id], "file_name": f"COCO_train2014_{img.image_id:012d}.jpg",
            "ann_id": [int(o.ann_id) for o in objs] or [-1], "ref_id": ref_id, "image_id": int(img.image_id),
            "split": splits[img.image_id], "category_id": category_id, "no_target": no_target,
            "sentences": [{"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": sent}],
        })
        sent_id += 1
    write_json(root / "grefs(unc).json", refs)
    used = sorted({r["image_id"] for r in refs})
    by_id = {i.image_id: i for i in train}
    doc = instances_json([by_id[i] for i in used], "grefcoco instances (SmartEdit synthetic sample)")
    write_json(root / "instances.json", doc)
    counts: dict[str, int] = {}
    kinds = {"single": 0, "multi": 0, "no_target": 0}
    for r in refs:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
        kinds["no_target" if r["no_target"] else "multi" if len(r["ann_id"]) > 1 else "single"] += 1
    return {"counts": {"grefcoco_unc": dict(sorted(counts.items()))}, "grefcoco_kinds": kinds}
