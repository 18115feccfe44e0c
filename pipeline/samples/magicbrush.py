"""MagicBrush parquet files: ``magicbrush/data/{train,dev}-00000-of-00001.parquet`` (current schema:
img_id, turn_index, source_img, mask_img, instruction, target_img) and
``magicbrush/legacy/train-00000-of-00001.parquet`` (an older revision: input_img / output_img, no mask).

Sessions are multi-turn: turn 2's source is turn 1's target, both rows share the img_id. Masks are
RGB PNGs, white where the edit happens. Image paths follow the release's naming
(``<img_id>-input.png``, ``<img_id>-output<t>.png``, ``<img_id>-mask<t>.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples.edits import apply_edit
from pipeline.samples.hf_parquet import write_parquet
from pipeline.samples.quirks import png_bytes
from pipeline.samples.scenes import plan_scene, render, scene_truth

SIZE = 256
SESSIONS = {"train": (2, 2, 2, 2), "dev": (2, 2, 1, 1)}
OPS = ("recolour", "replace", "add", "remove")
CURRENT = {"img_id": "string", "turn_index": "int32", "source_img": "image", "mask_img": "image", "instruction": "string",
           "target_img": "image"}
LEGACY = {"img_id": "string", "turn_index": "int32", "input_img": "image", "instruction": "string", "output_img": "image"}


def _mask_png(mask: np.ndarray) -> bytes:
    from PIL import Image

    rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return png_bytes(Image.fromarray(rgb, "RGB"))


def _phrase(instruction: str, rng: np.random.Generator) -> str:
    """Annotators' wording varies: capitalised or not, sometimes "Let ..." / "Have ..." forms."""
    style = int(rng.integers(3))
    if style == 0:
        return instruction[:1].upper() + instruction[1:]
    if style == 1:
        return "let's " + instruction
    return instruction


def write(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Write the current and legacy parquet files under `root` (= out_dir/magicbrush)."""
    counts: dict[str, int] = {}
    truths = []
    legacy_rows: dict[str, list] = {k: [] for k in LEGACY}
    for split, turns_per_session in SESSIONS.items():
        rows: dict[str, list] = {k: [] for k in CURRENT}
        for turns in turns_per_session:
            img_id = str(int(rng.integers(100_000, 600_000)))
            rendered = render(plan_scene(rng, SIZE, SIZE, "mixed"))
            source_path = f"{img_id}-input.png"
            source = png_bytes(rendered.image)
            for turn in range(1, turns + 1):
                plain = [o for o in rendered.scene.objects if not o.crowd and not o.in_mirror]
                ops = [op for op in OPS if op != "remove" or len(plain) > 1]
                op = ops[int(rng.integers(len(ops)))]
                pair = apply_edit(rendered, op, rng)
                target = png_bytes(pair.after.image)
                instruction = _phrase(pair.instruction, rng)
                row = {"img_id": img_id, "turn_index": turn, "source_img": {"bytes": source, "path": source_path},
                       "mask_img": {"bytes": _mask_png(pair.mask), "path": f"{img_id}-mask{turn}.png"},
                       "instruction": instruction,
                       "target_img": {"bytes": target, "path": f"{img_id}-output{turn}.png"}}
                for key in CURRENT:
                    rows[key].append(row[key])
                if split == "train":
                    for key, value in (("img_id", img_id), ("turn_index", turn), ("input_img", row["source_img"]),
                                       ("instruction", instruction), ("output_img", row["target_img"])):
                        legacy_rows[key].append(value)
                truths.append({"source": "magicbrush", "split": split, "file_name": f"{img_id}-output{turn}.png",
                               "path": None, "img_id": img_id, "turn_index": turn, "op": op,
                               "edit_mask_area": int(pair.mask.sum()), **scene_truth(pair.after)})
                rendered, source, source_path = pair.after, target, f"{img_id}-output{turn}.png"
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", rows, CURRENT)
        counts[split] = len(rows["img_id"])
    write_parquet(root / "legacy" / "train-00000-of-00001.parquet", legacy_rows, LEGACY)
    return {"counts": {"magicbrush": counts, "magicbrush_legacy": {"train": len(legacy_rows["img_id"])}}, "truths": truths}
