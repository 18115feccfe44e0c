"""Exact before/after edit pairs: apply one edit to a scene plan and re-render.

Because the background texture and each object's grain are seeded by the plan, the two renders
differ only where the edited object was or now is; the edit mask is that region (union of the
object's old and new masks), so "unchanged outside the mask" holds pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.samples import expressions as ex
from pipeline.samples.palette import COLOUR_NAMES
from pipeline.samples.scenes import COMMON, RenderedScene, ScenePlan, place, render
from pipeline.samples.shapes import ASPECT

EditOp = Literal["recolour", "replace", "remove", "add"]


@dataclass
class EditPair:
    """before/after renders, the edit mask (bool (H, W)), the instruction and both captions."""

    before: RenderedScene
    after: RenderedScene
    mask: np.ndarray
    op: str
    instruction: str
    input_caption: str
    output_caption: str
    target: str  # short description of the edited region afterwards (Reason-Edit's CLIP text)


def caption(scene: ScenePlan) -> str:
    """A one-line caption in InstructPix2Pix's style: the objects and the ground they stand on."""
    objs = [o for o in scene.objects if not o.in_mirror and not o.crowd]
    names = [f"a {ex.noun(o, True)}" for o in objs] or ["an empty scene"]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} on the {scene.lower.replace('-', ' ')}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def apply_edit(before: RenderedScene, op: EditOp, rng: np.random.Generator, index: int | None = None,
               *, phrase: str | None = None, new_colour: str | None = None, new_category: str | None = None) -> EditPair:
    """Apply `op` to object `index` (random plain object when None) of a rendered scene and render the result.

    phrase: how the instruction names the object (default its category); new_colour / new_category
    fix the result of recolour / replace / add.
    """
    scene = before.scene.copy()
    plain = [i for i, o in enumerate(scene.objects) if not o.crowd and not o.in_mirror]
    if index is None and op != "add":
        index = plain[int(rng.integers(len(plain)))]
    obj = scene.objects[index] if index is not None else None
    name = phrase or (obj.category if obj else "")
    if op == "recolour":
        assert obj is not None
        new_colour = new_colour or str(rng.choice([c for c in COLOUR_NAMES if c != obj.colour]))
        obj.colour = new_colour
        templates = [f"make the {name} {new_colour}", f"change the color of the {name} to {new_colour}",
                     f"turn the {name} {new_colour}"]
        target = f"{_article(ex.noun(obj, True))} {ex.noun(obj, True)}"
    elif op == "replace":
        assert obj is not None
        new_category = new_category or str(rng.choice([c for c in COMMON if c != obj.category]))
        # Fit the new silhouette inside the old box, so it overlaps nothing the old one did not.
        w = min(obj.w, obj.h / ASPECT[new_category])
        obj.category, obj.w, obj.h = new_category, round(w, 1), round(w * ASPECT[new_category], 1)
        art = _article(new_category)
        templates = [f"turn the {name} into {art} {new_category}", f"replace the {name} with {art} {new_category}",
                     f"change the {name} to {art} {new_category}"]
        target = f"{_article(ex.noun(obj, True))} {ex.noun(obj, True)}"
    elif op == "remove":
        assert obj is not None
        scene.objects.pop(index)
        templates = [f"remove the {name}", f"get rid of the {name}", f"take away the {name}"]
        target = scene.lower.replace("-", " ")
    elif op == "add":
        taken = [(o.cx - o.w / 2, o.cy - o.h / 2, o.cx + o.w / 2, o.cy + o.h / 2) for o in scene.objects]
        taken += [(m.x, m.y, m.x + m.w, m.y + m.h) for m in scene.mirrors]
        used = {o.category for o in scene.objects}
        category = new_category or str(rng.choice([c for c in COMMON if c not in used]))
        new = place(rng, scene, category, scene.width * 0.18, taken, colour=new_colour)
        if new is None:
            new = place(rng, scene, category, scene.width * 0.1, taken, colour=new_colour)
        if new is None:
            raise RuntimeError(f"no room to add a {category} to a {scene.width}x{scene.height} scene")
        scene.objects.append(new)
        index = len(scene.objects) - 1
        target = f"{_article(new.colour)} {ex.noun(new, True)}"
        templates = [f"add {target}", f"put {target} in the picture"]
    else:
        raise ValueError(f"edit op {op!r} unknown; expected recolour, replace, remove or add")
    after = render(scene)
    if op == "remove":
        mask = before.masks[index].copy()
    elif op == "add":
        mask = after.masks[index].copy()
    else:
        mask = before.masks[index] | after.masks[index]
    instruction = templates[int(rng.integers(len(templates)))]
    return EditPair(before, after, mask, op, instruction, caption(before.scene), caption(scene), target)
