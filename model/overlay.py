"""Segmentation as an edit (SmartEdit §3.3): the target is the source with the region blended 50/50 with a colour.

COCO-Stuff label maps, RefCOCO/gRefCOCO referring masks and LISA ReasonSeg masks all become
(source, target, instruction) triples here. An empty region (gRefCOCO no-target, a class absent from
the image) gives target = source and an "leave the picture as it is" instruction, so the model also
learns when *not* to edit. Templates and colours live in data_specs/instruction_templates/seg_overlay.yaml.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from data_specs import spec_path

DEFAULT_TEMPLATES = spec_path("instruction_templates", "seg_overlay.yaml")
N_MARK_TEMPLATES = 11
COCO_UNLABELED = 255


class OverlayTemplates(BaseModel):
    """The validated template file: 11 `mark` templates, `question` templates, `identity` templates, colours."""

    model_config = ConfigDict(extra="forbid")

    mark: list[str]
    question: list[str]
    identity: list[str]
    colors: dict[str, tuple[int, int, int]]

    @field_validator("mark")
    @classmethod
    def _mark(cls, v: list[str]) -> list[str]:
        if len(v) != N_MARK_TEMPLATES:
            raise ValueError(f"expected {N_MARK_TEMPLATES} mark templates (the paper's count), got {len(v)}")
        for t in v:
            if "{object}" not in t or "{color}" not in t:
                raise ValueError(f"mark template {t!r} must contain both {{object}} and {{color}}")
        return v

    @field_validator("question")
    @classmethod
    def _question(cls, v: list[str]) -> list[str]:
        for t in v:
            if "{question}" not in t or "{color}" not in t:
                raise ValueError(f"question template {t!r} must contain both {{question}} and {{color}}")
        return v

    @field_validator("identity")
    @classmethod
    def _identity(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one identity template is needed")
        for t in v:
            if "{color}" in t or "{question}" in t:
                raise ValueError(f"identity template {t!r} may use only {{object}}")
        return v

    @field_validator("colors")
    @classmethod
    def _colors(cls, v: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
        for name, rgb in v.items():
            if not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"colour {name}: RGB values must be in 0..255, got {rgb}")
        return v


@functools.lru_cache(maxsize=4)
def load_templates(path: Path | str = DEFAULT_TEMPLATES) -> OverlayTemplates:
    path = Path(path)
    try:
        return OverlayTemplates.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: overlay template file not found (default {DEFAULT_TEMPLATES})") from err
    except ValidationError as err:
        raise ValueError(f"{path}: invalid overlay templates:\n{err}") from err


def blend_overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """50/50 alpha blend of ``color`` into ``image`` where ``mask``; pixels outside are returned unchanged.

    image: (H, W, 3) uint8. mask: (H, W) bool. Returns (H, W, 3) uint8 with
    ``out = (image + color + 1) // 2`` inside (the exact half, rounded half up).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    out = image.copy()
    m = mask.astype(bool)
    out[m] = ((image[m].astype(np.uint16) + np.asarray(color, np.uint16) + 1) // 2).astype(np.uint8)
    return out


@dataclass
class OverlayEdit:
    """A segmentation sample rendered as an edit. source/target: (H, W, 3) uint8."""

    source: np.ndarray
    target: np.ndarray
    instruction: str
    color: str | None  # None for identity edits
    identity: bool


def render_overlay_edit(
    image: np.ndarray,
    mask: np.ndarray,
    name: str,
    rng: np.random.Generator,
    *,
    templates: OverlayTemplates | None = None,
    ignore: np.ndarray | None = None,
    is_question: bool = False,
) -> OverlayEdit:
    """Blend ``mask`` (minus ``ignore``) with a random colour and phrase the instruction.

    image: (H, W, 3) uint8; mask, ignore: (H, W) bool. ``name`` is the object phrase (or the question
    when ``is_question``). An empty effective mask gives target = source and an identity instruction.
    """
    t = templates or load_templates()
    region = mask.astype(bool)
    if ignore is not None:
        region = region & ~ignore.astype(bool)
    if not region.any():
        template = t.identity[int(rng.integers(len(t.identity)))]
        return OverlayEdit(image, image.copy(), template.format(object=name), None, True)
    color = list(t.colors)[int(rng.integers(len(t.colors)))]
    if is_question and t.question:
        text = t.question[int(rng.integers(len(t.question)))].format(question=name.strip(), color=color.lower())
    else:
        text = t.mark[int(rng.integers(len(t.mark)))].format(object=name.strip(), color=color.lower())
    return OverlayEdit(image, blend_overlay(image, region, t.colors[color]), text, color, False)


def labelmap_edit(image: np.ndarray, labels: np.ndarray, classes: list[dict[str, Any]], rng: np.random.Generator, *,
                  templates: OverlayTemplates | None = None, absent_class_prob: float = 0.0,
                  class_names: dict[int, str] | None = None) -> OverlayEdit:
    """COCO-Stuff: one class listed in ``classes`` ([{id, name}]) becomes the region ``labels == id``.

    labels: (H, W) uint8 label map, 255 = unlabeled (never a class). With ``absent_class_prob`` > 0 and
    ``class_names`` (all names), a class absent from the image is picked instead: an identity edit.
    """
    present = [c for c in classes if int(c["id"]) != COCO_UNLABELED]
    if class_names and rng.random() < absent_class_prob:
        absent = sorted(set(class_names) - {int(c["id"]) for c in present} - {COCO_UNLABELED})
        if absent:
            cid = absent[int(rng.integers(len(absent)))]
            return render_overlay_edit(image, np.zeros(labels.shape, bool), class_names[cid], rng, templates=templates)
    if not present:
        return render_overlay_edit(image, np.zeros(labels.shape, bool), "labelled object", rng, templates=templates)
    chosen = present[int(rng.integers(len(present)))]
    return render_overlay_edit(image, labels == int(chosen["id"]), str(chosen["name"]), rng, templates=templates)


def referring_edit(image: np.ndarray, mask: np.ndarray, sentences: list[str], no_target: bool,
                   rng: np.random.Generator, *, templates: OverlayTemplates | None = None) -> OverlayEdit:
    """RefCOCO/+/g, gRefCOCO: one referring sentence; mask (H, W) bool; no_target → identity edit."""
    sentence = sentences[int(rng.integers(len(sentences)))] if sentences else "the object"
    region = np.zeros(mask.shape, bool) if no_target else mask.astype(bool)
    return render_overlay_edit(image, region, sentence, rng, templates=templates)


def reasoning_edit(image: np.ndarray, mask: np.ndarray, ignore: np.ndarray, sentences: list[str], is_sentence: bool,
                   rng: np.random.Generator, *, templates: OverlayTemplates | None = None) -> OverlayEdit:
    """LISA ReasonSeg: the ignore region is left out of the overlay; sentence queries use `question` templates."""
    query = sentences[int(rng.integers(len(sentences)))] if sentences else "the target"
    return render_overlay_edit(image, mask, query, rng, templates=templates, ignore=ignore, is_question=is_sentence)
