"""LISA ReasonSeg: ``ReasonSeg/{train,val,test}/<name>.jpg`` + ``<name>.json`` and ``explanatory/train.json``.

Each json is {"text": [queries], "is_sentence": bool, "shapes": [...]} where a shape is a polygon
labelled "target", "ignore" / "ignore_<k>" (pixels excluded from the loss) or "flag" (a deprecated
marker to skip). The quirks of the release are reproduced: stems with dots and spaces
("img 2.0 final.jpg"), and one json that is not UTF-8 but Windows-1252 (LISA's loader falls back
to cp1252 for such files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples.quirks import jpeg_bytes, write_bytes, write_json
from pipeline.samples.scenes import RenderedScene, place_category_first, render, scene_truth

# category → (short phrase, implicit question, explanation of the answer)
AFFORDANCES: dict[str, tuple[str, str, str]] = {
    "clock": ("the object that shows the time", "What in this picture would tell me whether I am late for a meeting?",
              "The clock shows the current time, so it tells whether you are late."),
    "umbrella": ("something that keeps you dry in the rain", "If it starts to rain, which object here should I take with me?",
                 "An umbrella shields a person from the rain."),
    "cup": ("something to drink coffee from", "I want a hot coffee; what could I pour it into?",
            "A cup is made to hold hot drinks such as coffee."),
    "chair": ("a place to sit down", "After a long walk I want to rest my legs. What could I use here?",
              "A chair is made for sitting, so it lets you rest your legs."),
    "bottle": ("a container for water", "Where could I keep water for a long trip?",
               "A bottle can be filled with water and closed for carrying."),
    "tv": ("the screen for watching the news", "Which object would I use to watch a football match at home?",
           "A television shows broadcasts such as football matches."),
    "book": ("something to read", "What could I read to pass the time on a train?",
             "A book can be read anywhere, for example on a train."),
    "potted plant": ("the thing that needs watering", "Which object here needs water every few days to stay alive?",
                     "A potted plant is alive and needs regular watering."),
    "sports ball": ("something to kick around", "What could the children play football with?",
                    "A ball is what football is played with."),
    "teddy bear": ("a soft toy for a child", "What might a small child hug when going to sleep?",
                   "A teddy bear is a soft toy that children hug."),
    "laptop": ("a device for writing emails", "Which object could I use to answer my emails?",
               "A laptop is a computer that can be used to write emails."),
    "bench": ("a seat for several people outdoors", "Where could a few friends sit together in the park?",
              "A bench is a long seat for several people."),
}
SPLITS = (("train", 6), ("val", 3), ("test", 3))
SIZES = ((640, 480), (512, 384), (480, 360), (400, 600))
DOTTED_STEM = "img 2.0 final"
CP1252_STEM_SPLIT = ("val", 1)


def _shape(label: str, part: list[float], image_name: str) -> dict[str, Any]:
    points = [[part[k], part[k + 1]] for k in range(0, len(part), 2)]
    return {"label": label, "labels": [label], "shape_type": "polygon", "image_name": image_name, "points": points,
            "group_id": None, "group_ids": [None], "flags": {}}


def _name(split: str, pos: int, rng: np.random.Generator) -> str:
    if (split, pos) == ("train", 2):
        return DOTTED_STEM
    if (split, pos) == ("test", 0):
        return "scene.0042 kitchen"
    return f"{int(rng.integers(1000, 99999))}_{int(rng.integers(16**12)):012x}"


def write(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Write the ReasonSeg splits and explanatory json under `root` (= out_dir/ReasonSeg)."""
    cats = list(AFFORDANCES)
    truths, counts, explanatory, quirks = [], {}, [], {"dotted_stems": [], "cp1252_json": []}
    for split, n in SPLITS:
        counts[split] = n
        for pos in range(n):
            stem = _name(split, pos, rng)
            cp1252 = (split, pos) == CP1252_STEM_SPLIT
            category = "cup" if cp1252 else cats[int(rng.integers(len(cats)))]
            width, height = SIZES[int(rng.integers(len(SIZES)))]
            scene = place_category_first(rng, width, height, category, extra=int(rng.integers(1, 3)))
            rendered: RenderedScene = render(scene)
            image_name = f"{stem}.jpg"
            phrase, question, why = AFFORDANCES[category]
            is_sentence = bool(pos % 2 == 0)
            text = [question if is_sentence else phrase]
            if cp1252:
                text = ["Which object would a café customer drink from?"]
                is_sentence = True
            elif split != "train" and rng.random() < 0.5:
                text.append(phrase if is_sentence else question)
            target = scene.objects[0]
            shapes = [_shape("target", part, image_name) for part in target.polygons()]
            ignore = []
            if len(scene.objects) > 1 and pos % 3 == 1:
                # Annotators mark an ambiguous neighbour as "ignore": excluded from the loss, not background.
                ignore = [1]
                label = "ignore" if split == "train" else "ignore_1"
                shapes += [_shape(label, part, image_name) for part in scene.objects[1].polygons()]
            flag = (split, pos) == ("train", 0)
            if flag:
                shapes.append(_shape("flag", [5.0, 5.0, 25.0, 5.0, 15.0, 20.0], image_name))
            doc = {"text": text, "is_sentence": is_sentence, "shapes": shapes}
            write_bytes(root / split / image_name, jpeg_bytes(rendered.image))
            write_json(root / split / f"{stem}.json", doc, encoding="cp1252" if cp1252 else "utf-8")
            if cp1252:
                quirks["cp1252_json"].append(f"ReasonSeg/{split}/{stem}.json")
            if " " in stem or "." in stem:
                quirks["dotted_stems"].append(f"ReasonSeg/{split}/{image_name}")
            if split == "train" and len(explanatory) < 3:
                explanatory.append({"image": image_name, "query": question, "outputs": f"It is the {category}. {why}"})
            target_area = int(rendered.masks[0].sum())
            truths.append({"source": "reasonseg", "split": split, "file_name": image_name,
                           "path": f"ReasonSeg/{split}/{image_name}", "target_indices": [0], "ignore_indices": ignore,
                           "has_flag": flag, "target_area": target_area, **scene_truth(rendered)})
    write_json(root / "explanatory" / "train.json", explanatory)
    return {"counts": {"reasonseg": counts, "reasonseg_explanatory": {"train": len(explanatory)}},
            "quirks": quirks, "truths": truths}
