"""Referring expressions, questions and edit instructions read off a rendered scene's ground truth.

Every phrase is true of the scene by construction: positions come from mask centroids, sizes from
mask areas (siblings differ ≥ 2× in area), colours from the plan. Three styles mirror the refer
datasets: ``unc`` (RefCOCO: short, location words allowed), ``plus`` (RefCOCO+: no location words)
and ``g`` (RefCOCOg: longer, complete sentences).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.samples.scenes import PlannedObject, RenderedScene
from pipeline.samples.shapes import plural

Style = Literal["unc", "plus", "g"]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class ObjectContext:
    """Where an object stands among the same-category objects of its scene (reflections excluded).

    position: left / middle / right among siblings, None when it has none.
    size: biggest / smallest / medium (or bigger / smaller for two), None when it has no siblings.
    nearest: category of the closest object of another category (by mask centroid), None if there is none.
    """

    obj: PlannedObject
    n_siblings: int
    position: str | None
    size: str | None
    colour_unique: bool
    has_reflection: bool
    nearest: str | None


def context(rendered: RenderedScene, index: int) -> ObjectContext:
    objects, masks = rendered.scene.objects, rendered.masks
    obj = objects[index]
    sib = [i for i, o in enumerate(objects) if o.category == obj.category and not o.in_mirror and not o.crowd]
    centre_x = {i: float(np.nonzero(masks[i])[1].mean()) for i in sib}
    area = {i: int(masks[i].sum()) for i in sib}
    position = size = None
    if len(sib) > 1 and not obj.in_mirror:
        by_x = sorted(sib, key=centre_x.__getitem__)
        position = "left" if by_x[0] == index else "right" if by_x[-1] == index else "middle"
        by_area = sorted(sib, key=area.__getitem__)
        if len(sib) == 2:
            size = "bigger" if by_area[-1] == index else "smaller"
        else:
            size = "biggest" if by_area[-1] == index else "smallest" if by_area[0] == index else "medium sized"
    colours = [objects[i].colour for i in sib]
    centre = {i: np.nonzero(m)[::-1] for i, m in enumerate(masks)}
    mean = {i: (float(xy[0].mean()), float(xy[1].mean())) for i, xy in centre.items() if len(xy[0])}
    others = [i for i, o in enumerate(objects) if o.category != obj.category and not o.crowd and not o.in_mirror and i in mean]
    nearest = None
    if others and index in mean:
        cx, cy = mean[index]
        nearest = objects[min(others, key=lambda i: (mean[i][0] - cx) ** 2 + (mean[i][1] - cy) ** 2)].category
    return ObjectContext(
        obj=obj, n_siblings=len(sib), position=position, size=size,
        colour_unique=colours.count(obj.colour) == 1,
        has_reflection=any(o.in_mirror and o.category == obj.category for o in objects),
        nearest=nearest,
    )


def noun(obj: PlannedObject, colour: bool = False) -> str:
    """"red car", or "person in red" (people are described by their clothes)."""
    if not colour:
        return obj.category
    return f"{obj.category} in {obj.colour}" if obj.category == "person" else f"{obj.colour} {obj.category}"


def expressions(ctx: ObjectContext, style: Style) -> list[str]:
    """Candidate referring expressions (lower case, no punctuation) that single out ctx.obj; [] if none does."""
    o, cat = ctx.obj, ctx.obj.category
    if o.crowd:
        return []
    if o.in_mirror:
        return {"unc": [f"{cat} in the mirror", f"{cat} reflection"],
                "plus": [f"reflection of the {noun(o, True)}", f"reflected {cat}"],
                "g": [f"the reflection of a {noun(o, True)} that can be seen in the mirror"]}[style]
    if ctx.n_siblings == 1:
        near = f"next to the {ctx.nearest}" if ctx.nearest else "in the picture"
        if ctx.has_reflection:
            return {"unc": [f"real {cat}", f"{cat} outside the mirror"], "plus": [f"real {cat} not the reflection"],
                    "g": [f"the {noun(o, True)} standing in front of the mirror"]}[style]
        return {"unc": [cat, noun(o, True)], "plus": [noun(o, True), cat], "g": [f"a {noun(o, True)} {near}"]}[style]
    out: list[str] = []
    if style == "unc":
        out += [f"{ctx.position} {cat}", f"{cat} on the {ctx.position}" if ctx.position != "middle" else f"{cat} in the middle"]
        if ctx.colour_unique:
            out.append(noun(o, True))
    elif style == "plus":
        if ctx.colour_unique:
            out.append(noun(o, True))
        out.append(f"{ctx.size} {cat}")
    else:
        if ctx.colour_unique:
            out.append(f"the {noun(o, True)} on the {ctx.position} side of the picture" if ctx.position != "middle"
                       else f"the {noun(o, True)} in the middle of the picture")
        comparatives = {"bigger": "larger", "smaller": "smaller", "biggest": "largest", "smallest": "smallest"}
        comparative = comparatives.get(ctx.size or "")
        if comparative:
            out.append(f"the {comparative} of the {NUMBER_WORDS[ctx.n_siblings]} {plural(cat)}")
        else:
            out.append(f"the {cat} between the other two {plural(cat)}")
    return out


def raw_and_sent(text: str, rng: np.random.Generator) -> tuple[str, str, list[str]]:
    """A sentence as an annotator typed it (raw) and as the refer toolkit stores it (sent, tokens)."""
    raw = text
    variant = int(rng.integers(4))
    if variant == 1:
        raw = raw[:1].upper() + raw[1:]
    elif variant == 2:
        raw = raw + "."
    elif variant == 3:
        raw = raw.upper()
    sent = re.sub(r"[^a-z0-9 ]+", " ", raw.lower())
    tokens = sent.split()
    return raw, " ".join(tokens), tokens
