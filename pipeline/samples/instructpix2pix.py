"""InstructPix2Pix in both published forms.

Folder form (``instructpix2pix/folder``): ``seeds.json`` = [[dir, [seed, ...]]], and per prompt
directory ``<%07d>/prompt.json`` {input, edit, output}, ``<seed>_0.jpg`` (input), ``<seed>_1.jpg``
(edited) and ``metadata.jsonl`` (one line per generated seed with the CLIP filter scores). As in the
release, metadata.jsonl may list a seed that the filter dropped (no images, not in seeds.json).

Parquet form (``instructpix2pix/parquet/data/train-00000-of-00001.parquet``, the hub's
clip-filtered dataset): original_prompt, original_image, edit_prompt, edited_prompt, edited_image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples.edits import apply_edit
from pipeline.samples.hf_parquet import write_parquet
from pipeline.samples.palette import COLOUR_NAMES, LOWER_STUFF
from pipeline.samples.quirks import jpeg_bytes, write_bytes, write_json
from pipeline.samples.scenes import place_category_first, render, scene_truth

SIZE = 256
# (main category, edit op, seeds in the directory)
PROMPTS = (("car", "recolour", 3), ("dog", "replace", 3), ("umbrella", "remove", 2), ("bench", "add", 2))


def _prompt(category: str, colour: str, ground: str, op: str, rng: np.random.Generator) -> tuple[dict[str, str], dict[str, Any]]:
    a = "an" if colour[0] in "aeiou" else "a"
    where = f"on the {ground.replace('-', ' ')}"
    params: dict[str, Any] = {}
    if op == "recolour":
        params["new_colour"] = new = str(rng.choice([c for c in COLOUR_NAMES if c != colour]))
        edit, output = f"make the {category} {new}", f"a photo of {'an' if new[0] in 'aeiou' else 'a'} {new} {category} {where}"
    elif op == "replace":
        params["new_category"] = new = "cat" if category != "cat" else "dog"
        edit, output = f"turn the {category} into a {new}", f"a photo of {a} {colour} {new} {where}"
    elif op == "remove":
        edit, output = f"remove the {category}", f"a photo of the empty {ground.replace('-', ' ')}"
    else:
        params["new_category"], params["new_colour"] = "bird", str(rng.choice([c for c in COLOUR_NAMES if c != colour]))
        edit = f"add a {params['new_colour']} bird"
        output = f"a photo of {a} {colour} {category} and a {params['new_colour']} bird {where}"
    return {"input": f"a photo of {a} {colour} {category} {where}", "edit": edit, "output": output}, params


def write(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Write the folder and parquet forms under `root` (= out_dir/instructpix2pix)."""
    folder = root / "folder"
    seeds_json, rows, truths = [], [], []
    dir_index = int(rng.integers(0, 500))
    metadata_only = None
    for category, op, n_seeds in PROMPTS:
        dir_index += int(rng.integers(1, 400))
        name = f"{dir_index:07d}"
        colour, ground = str(rng.choice(COLOUR_NAMES)), str(rng.choice(list(LOWER_STUFF)))
        prompt, params = _prompt(category, colour, ground, op, rng)
        write_json(folder / name / "prompt.json", prompt)
        seeds = [str(s) for s in sorted(int(x) for x in rng.choice(2**31, size=n_seeds + 1, replace=False))]
        lines = []
        for k, seed in enumerate(seeds):
            lines.append(json.dumps({"seed": int(seed), "p2p_threshold": round(float(rng.uniform(0.1, 0.9)), 4),
                                     "cfg_scale": 7.5, "clip_sim_0": float(rng.uniform(0.2, 0.35)),
                                     "clip_sim_1": float(rng.uniform(0.2, 0.35)), "clip_sim_dir": float(rng.uniform(0.2, 0.4)),
                                     "clip_sim_image": float(rng.uniform(0.75, 0.95))}, sort_keys=True))
            if k == n_seeds:  # the last generated seed failed the CLIP filter: metadata only
                metadata_only = metadata_only or f"instructpix2pix/folder/{name}/{seed}"
                continue
            scene = place_category_first(rng, SIZE, SIZE, category, extra=0 if op == "remove" else int(rng.integers(0, 2)))
            scene.objects[0].colour, scene.lower = colour, ground
            pair = apply_edit(render(scene), op, rng, None if op == "add" else 0, **params)
            before, after = jpeg_bytes(pair.before.image), jpeg_bytes(pair.after.image)
            write_bytes(folder / name / f"{seed}_0.jpg", before)
            write_bytes(folder / name / f"{seed}_1.jpg", after)
            rows.append((prompt, before, after))
            for stage, rendered in (("0", pair.before), ("1", pair.after)):
                truths.append({"source": "instructpix2pix", "split": "train", "file_name": f"{seed}_{stage}.jpg",
                               "path": f"instructpix2pix/folder/{name}/{seed}_{stage}.jpg", "op": op,
                               "edit_mask_area": int(pair.mask.sum()), **scene_truth(rendered)})
        write_bytes(folder / name / "metadata.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
        seeds_json.append([name, seeds[:n_seeds]])
    write_json(folder / "seeds.json", seeds_json)
    write_parquet(root / "parquet" / "data" / "train-00000-of-00001.parquet", {
        "original_prompt": [p["input"] for p, _, _ in rows],
        "original_image": [{"bytes": b, "path": None} for _, b, _ in rows],
        "edit_prompt": [p["edit"] for p, _, _ in rows],
        "edited_prompt": [p["output"] for p, _, _ in rows],
        "edited_image": [{"bytes": a, "path": None} for _, _, a in rows],
    }, {"original_prompt": "string", "original_image": "image", "edit_prompt": "string", "edited_prompt": "string",
        "edited_image": "image"})
    n = sum(len(s) for _, s in seeds_json)
    return {"counts": {"instructpix2pix_folder": {"train": n}, "instructpix2pix_parquet": {"train": len(rows)}},
            "quirks": {"ip2p_metadata_only_seed": metadata_only}, "truths": truths}
