"""The Reason-Edit evaluation layout: ``reason_edit/<category>/`` with ``*.png`` inputs, ``*_mask.jpg``
masks (white = the region to edit; JPEG, so not exactly binary) and one text file whose lines
``<instruction> CLIP: <target description>`` pair with the PNGs in sorted order.

Each category's instructions need what its name says: left/right position, relative size, a
reflection in a mirror, a colour, one object among several categories, or reasoning about what an
object is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import expressions as ex
from pipeline.samples.edits import apply_edit
from pipeline.samples.quirks import jpeg_bytes, png_bytes, write_bytes
from pipeline.samples.reasonseg import AFFORDANCES
from pipeline.samples.scenes import COMMON, RenderedScene, place_category_first, plan_scene, render, scene_truth
from pipeline.vocabulary import REASON_EDIT_CATEGORIES as CATEGORIES

ITEMS_PER_CATEGORY = 3
SIZES = ((320, 240), (256, 256), (400, 300))


def _mask_jpeg(mask: np.ndarray) -> bytes:
    from PIL import Image

    rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return jpeg_bytes(Image.fromarray(rgb, "RGB"))


def _item(category: str, rng: np.random.Generator) -> tuple[RenderedScene, int, str, dict[str, Any]]:
    """(scene, target index, how the instruction names the target, edit parameters) for one category."""
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    if category in ("1-Left-Right", "2-Relative-Size"):
        rendered = render(plan_scene(rng, width, height, "multi"))
        ctxs = [ex.context(rendered, i) for i in range(len(rendered.scene.objects))]
        if category == "1-Left-Right":
            side = "left" if rng.random() < 0.5 else "right"
            index = next(i for i, c in enumerate(ctxs) if c.position == side)
            phrase = f"{ctxs[index].obj.category} on the {ctxs[index].position}"
        else:
            wanted = ("bigger", "biggest") if rng.random() < 0.5 else ("smaller", "smallest")
            index = next(i for i, c in enumerate(ctxs) if c.size in wanted)
            phrase = f"{ctxs[index].size} {ctxs[index].obj.category}"
        return rendered, index, phrase, {"op": "replace"}
    if category == "3-Mirror":
        rendered = render(plan_scene(rng, 400, 300, "mirror"))
        index = next(i for i, o in enumerate(rendered.scene.objects) if o.in_mirror)
        return rendered, index, f"{rendered.scene.objects[index].category} in the mirror", {"op": "recolour"}
    if category == "4-Color":
        rendered = render(plan_scene(rng, width, height, "colours"))
        index = int(rng.integers(len(rendered.scene.objects)))
        return rendered, index, ex.noun(rendered.scene.objects[index], True), {"op": "replace"}
    if category == "5-Multiple-Objects":
        rendered = render(plan_scene(rng, width, height, "mixed"))
        index = int(rng.integers(len(rendered.scene.objects)))
        obj = rendered.scene.objects[index]
        others = [o for o in rendered.scene.objects if o is not obj and not o.crowd]
        phrase = obj.category
        if others:  # name its nearest neighbour, as the benchmark's multi-object instructions do
            nearest = min(others, key=lambda o: (o.cx - obj.cx) ** 2 + (o.cy - obj.cy) ** 2)
            phrase = f"{obj.category} next to the {nearest.category}"
        return rendered, index, phrase, {"op": "replace"}
    target = list(AFFORDANCES)[int(rng.integers(len(AFFORDANCES)))]
    rendered = render(place_category_first(rng, width, height, target))
    return rendered, 0, target, {"op": "replace", "reasoning": AFFORDANCES[target][1]}


def write(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Write the six category folders under `root` (= out_dir/reason_edit)."""
    counts, truths = {}, []
    for category in CATEGORIES:
        lines = []
        for k in range(ITEMS_PER_CATEGORY):
            rendered, index, phrase, params = _item(category, rng)
            current = rendered.scene.objects[index].category
            new_category = str(rng.choice([c for c in COMMON if c != current]))
            pair = apply_edit(rendered, params["op"], rng, index, phrase=phrase,
                              new_category=new_category if params["op"] == "replace" else None)
            instruction = pair.instruction[:1].upper() + pair.instruction[1:]
            if "reasoning" in params:
                art = "an" if new_category[0] in "aeiou" else "a"
                instruction = f"{params['reasoning']} Replace it with {art} {new_category}."
            lines.append(f"{instruction} CLIP: {pair.target}")
            stem = f"{k + 1:03d}"
            write_bytes(root / category / f"{stem}.png", png_bytes(rendered.image))
            write_bytes(root / category / f"{stem}_mask.jpg", _mask_jpeg(pair.mask))
            truths.append({"source": "reason_edit", "split": category, "file_name": f"{stem}.png",
                           "path": f"reason_edit/{category}/{stem}.png", "target_index": index,
                           "instruction": instruction, "clip_text": pair.target, "edit_mask_area": int(pair.mask.sum()),
                           **scene_truth(rendered)})
        name = category.split("-", 1)[1].replace("-", "_")
        write_bytes(root / category / f"{name}.txt", ("\n".join(lines) + "\n").encode("utf-8"))
        counts[category] = ITEMS_PER_CATEGORY
    return {"counts": {"reason_edit": counts}, "truths": truths}
