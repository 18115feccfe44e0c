"""LLaVA-Instruct-150k: ``llava/llava_instruct_150k.json``.

A list of {id, image, conversations: [{from: human|gpt, value}]} over COCO train2017 images. As in
the real file, ``<image>`` appears exactly once, in the first human turn, either leading
("<image>\\nWhat ...") or trailing ("What ...?\\n<image>"); an image (and its id) gets several records
(conversation, detailed description, complex reasoning), so ids are not unique keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import expressions as ex
from pipeline.samples.coco import CocoImage
from pipeline.samples.quirks import write_json
from pipeline.samples.shapes import plural

_SIDE = {"left": "on the left side of the image", "right": "on the right side of the image",
         "middle": "in the middle of the image"}


def _where(img: CocoImage, index: int) -> str:
    mask_x = float(np.nonzero(img.rendered.masks[index])[1].mean()) / img.scene.width
    return _SIDE["left" if mask_x < 0.36 else "right" if mask_x > 0.64 else "middle"]


def _conversation(img: CocoImage, rng: np.random.Generator) -> list[tuple[str, str]]:
    objs = [o for o in img.scene.objects if not o.crowd and not o.in_mirror]
    cats = sorted({o.category for o in objs})
    turns = []
    first = objs[int(rng.integers(len(objs)))]
    i = img.scene.objects.index(first)
    ctx = ex.context(img.rendered, i)
    if ctx.n_siblings == 1:
        turns.append((f"What color is the {first.category} in the image?",
                      f"The {first.category} in the image is {first.colour}."))
    else:
        turns.append((f"How many {plural(first.category)} are there in the image?",
                      f"There are {ex.NUMBER_WORDS[ctx.n_siblings]} {plural(first.category)} in the image."))
    if ctx.n_siblings == 1 or ctx.colour_unique:
        turns.append((f"Where is the {ex.noun(first, True)} located?", f"The {ex.noun(first, True)} is {_where(img, i)}."))
    else:
        where = "in the middle" if ctx.position == "middle" else f"on the {ctx.position}"
        turns.append((f"What color is the {first.category} {where}?", f"The {first.category} {where} is {first.colour}."))
    if len(cats) > 1:
        turns.append(("What objects can you see in the picture?",
                      "The picture shows " + ", ".join(f"a {c}" for c in cats[:-1]) + f" and a {cats[-1]}."))
    reflected = [o for o in img.scene.objects if o.in_mirror]
    if reflected:
        turns.append(("Is there anything reflected in the mirror?",
                      f"Yes, the mirror shows the reflection of a {ex.noun(reflected[0], True)}."))
    return turns


def _detail(img: CocoImage) -> list[tuple[str, str]]:
    parts = []
    for i, o in enumerate(img.scene.objects):
        if o.crowd:
            parts.append(f"a group of people {_where(img, i)}")
        elif o.in_mirror:
            parts.append(f"the reflection of a {ex.noun(o, True)} in a framed mirror")
        else:
            parts.append(f"a {ex.noun(o, True)} {_where(img, i)}")
    ground = img.scene.lower.replace("-", " ")
    return [("Describe the following image.", f"The image shows {'; '.join(parts)}. The scene is set on {ground}.")]


def _reasoning(img: CocoImage) -> list[tuple[str, str]]:
    objs = [o for o in img.scene.objects if not o.crowd and not o.in_mirror]
    big = max(objs, key=lambda o: o.w * o.h)
    return [("Which object takes up the most space in this picture, and why might that matter?",
             f"The {ex.noun(big, True)} takes up the most space. Because it is the largest object, it is the first "
             f"thing a viewer notices and it anchors the composition of the scene.")]


def _record(img: CocoImage, turns: list[tuple[str, str]], leading: bool) -> dict[str, Any]:
    conversations = []
    for k, (question, answer) in enumerate(turns):
        if k == 0:
            question = f"<image>\n{question}" if leading else f"{question}\n<image>"
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": f"{img.image_id:012d}", "image": img.file_name, "conversations": conversations}


def write(root: Path, images: list[CocoImage], rng: np.random.Generator) -> dict[str, Any]:
    """Write llava_instruct_150k.json under `root` (= out_dir/llava)."""
    records = []
    for img in images:
        # Colour questions about a grayscale picture would be wrong; the real file has no such records either.
        if img.split != "train2017" or img.mode == "L" or not any(not o.crowd and not o.in_mirror for o in img.scene.objects):
            continue
        records.append(_record(img, _conversation(img, rng), bool(rng.integers(2))))
        if rng.random() < 0.5:
            records.append(_record(img, _detail(img), bool(rng.integers(2))))
        if rng.random() < 0.3:
            records.append(_record(img, _reasoning(img), bool(rng.integers(2))))
    order = rng.permutation(len(records))  # the real file is not grouped by image
    records = [records[int(i)] for i in order]
    write_json(root / "llava_instruct_150k.json", records)
    return {"counts": {"llava_instruct_150k": {"train": len(records)}}}
