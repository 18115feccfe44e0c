"""Rendered scenes with exact ground truth: the pixels every sample dataset is made of.

A `ScenePlan` is a plan (image size, stuff background, mirrors, objects with category, colour, box);
`render` turns it into an RGB image, a COCO-Stuff label map and one mask per object. Object masks
come from rasterising the very polygons that are annotated (pycocotools, the same rasteriser the
converters use), and the object is painted through that mask, so annotation, pixels and label map
agree exactly. The background texture is seeded by the plan, so re-rendering an edited copy of a
scene changes only the edited object's pixels (how the edit datasets get exact before/after pairs).

Planners (`plan_scene`) make the scene kinds the datasets need: several objects of one category
(left/middle/right, bigger/smaller), distinct colours within a category, a mirror holding a
reflected copy of an object, a crowd (one iscrowd RLE annotation) and mixed categories.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.samples.categories import CATEGORY_ID, UNLABELED, stuff_value, thing_value
from pipeline.samples.palette import COLOURS, LOWER_STUFF, MIRROR_FRAME_RGB, MIRROR_GLASS_RGB, UPPER_STUFF
from pipeline.samples.shapes import ASPECT, category_polygons

SCENE_KINDS: tuple[str, ...] = ("multi", "colours", "people", "mixed", "mirror", "crowd")
# Categories drawn in generic scenes (all have a silhouette); person has its own scene kind.
COMMON = ("car", "dog", "cat", "bus", "bird", "horse", "sheep", "cup", "bottle", "apple", "clock", "vase",
          "umbrella", "potted plant", "tv", "laptop", "chair", "sports ball", "kite", "book", "teddy bear",
          "cake", "bench", "elephant", "stop sign")
MARGIN = 4


@dataclass
class PlannedObject:
    """One object: a silhouette of `category` filled with palette `colour`, centred at (cx, cy), size w × h px.

    in_mirror: a reflected copy drawn inside a mirror (flip is then the opposite of the original's).
    crowd: a group of small instances annotated as one iscrowd=1 RLE (then `parts` holds their boxes).
    """

    category: str
    colour: str
    cx: float
    cy: float
    w: float
    h: float
    flip: bool = False
    in_mirror: bool = False
    crowd: bool = False
    parts: list[tuple[float, float, float, float]] = field(default_factory=list)
    ann_id: int | None = None

    @property
    def category_id(self) -> int:
        return CATEGORY_ID[self.category]

    def polygons(self) -> list[list[float]]:
        """COCO flat polygons (all parts; for a crowd, all members' parts)."""
        if self.crowd:
            return [p for (cx, cy, w, h) in self.parts for p in category_polygons(self.category, cx, cy, w, h)]
        return category_polygons(self.category, self.cx, self.cy, self.w, self.h, self.flip)


@dataclass
class Mirror:
    """A framed mirror: outer box (x, y, w, h) in px; the glass is the box shrunk by `frame` px."""

    x: int
    y: int
    w: int
    h: int
    frame: int = 6

    @property
    def glass(self) -> tuple[int, int, int, int]:
        return (self.x + self.frame, self.y + self.frame, self.w - 2 * self.frame, self.h - 2 * self.frame)


@dataclass
class ScenePlan:
    """A plan: size, two stuff regions split at `horizon` (fraction of the height), mirrors, objects."""

    width: int
    height: int
    upper: str
    lower: str
    horizon: float
    noise_seed: int
    unlabeled_band: int = 0
    kind: str = "mixed"
    mirrors: list[Mirror] = field(default_factory=list)
    objects: list[PlannedObject] = field(default_factory=list)

    def copy(self) -> "ScenePlan":
        return copy.deepcopy(self)


@dataclass
class RenderedScene:
    """image: RGB (H, W); labels: uint8 (H, W) COCO-Stuff values; masks: bool (H, W) per object."""

    scene: ScenePlan
    image: Any  # PIL.Image.Image
    labels: np.ndarray
    masks: list[np.ndarray]


def rasterise(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Union of COCO polygons as a bool mask (H, W), with pycocotools (what annToMask does)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.decode(rle).astype(bool)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (H, W) multiplicative texture around 1: low-frequency waves plus fine grain, so JPEGs look photographic."""
    xx, yy = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    fx, fy, phase = rng.uniform(0.01, 0.05), rng.uniform(0.01, 0.05), rng.uniform(0, 6.28)
    waves = 0.05 * np.cos(fy * yy - phase)[:, None] * np.sin(fx * xx + phase)[None, :]
    grain = rng.normal(0.0, 0.025, size=(height, width)).astype(np.float32)
    return 1.0 + waves + grain


def render(scene: ScenePlan) -> RenderedScene:
    """Render a scene: background, mirrors, then objects in order (later objects on top)."""
    from PIL import Image

    h, w = scene.height, scene.width
    rng = np.random.default_rng(scene.noise_seed)
    tex = _texture(rng, h, w)
    horizon = int(round(scene.horizon * h))
    rows = np.arange(h, dtype=np.float32)[:, None]
    upper = np.array(UPPER_STUFF[scene.upper], np.float32) * (0.9 + 0.15 * rows / max(horizon, 1))[..., None]
    lower = np.array(LOWER_STUFF[scene.lower], np.float32) * (0.85 + 0.2 * (rows - horizon) / max(h - horizon, 1))[..., None]
    img = np.where((rows < horizon)[..., None], upper, lower) * tex[..., None]
    img = np.broadcast_to(img, (h, w, 3)).copy()
    labels = np.where(rows < horizon, stuff_value(scene.upper), stuff_value(scene.lower)).astype(np.uint8)
    labels = np.broadcast_to(labels, (h, w)).copy()
    if scene.unlabeled_band:
        # COCO-Stuff leaves thin unlabeled seams where annotators' regions meet.
        labels[max(horizon - scene.unlabeled_band, 0): horizon + scene.unlabeled_band] = UNLABELED

    for m in scene.mirrors:
        img[m.y: m.y + m.h, m.x: m.x + m.w] = np.array(MIRROR_FRAME_RGB, np.float32) * tex[m.y: m.y + m.h, m.x: m.x + m.w, None]
        gx, gy, gw, gh = m.glass
        shade = (1.05 - 0.12 * np.arange(gw, dtype=np.float32) / max(gw, 1))[None, :, None]
        img[gy: gy + gh, gx: gx + gw] = np.array(MIRROR_GLASS_RGB, np.float32) * shade
        labels[m.y: m.y + m.h, m.x: m.x + m.w] = stuff_value("mirror-stuff")

    masks = []
    for obj in scene.objects:
        mask = rasterise(obj.polygons(), h, w)
        masks.append(mask)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        sub = mask[y0:y1, x0:x1]
        rows_in = np.arange(y0, y1, dtype=np.float32)[:, None, None]
        top, bottom = obj.cy - obj.h / 2, obj.cy + obj.h / 2
        # Gentle top-to-bottom shading; reflections a little darker, as mirrors are.
        shading = 1.06 - 0.12 * np.clip((rows_in - top) / max(bottom - top, 1.0), 0, 1)
        fill = np.array(COLOURS[obj.colour], np.float32) * shading * (0.9 if obj.in_mirror else 1.0)
        # Grain seeded by the object's own box, so editing one object leaves every other pixel identical.
        grain_rng = np.random.default_rng([scene.noise_seed, int(obj.cx * 10), int(obj.cy * 10), int(obj.w * 10)])
        fill = fill + grain_rng.normal(0.0, 2.5, size=(y1 - y0, x1 - x0, 1)).astype(np.float32)
        img[y0:y1, x0:x1] = np.where(sub[..., None], fill, img[y0:y1, x0:x1])
        labels[mask] = thing_value(obj.category_id)
    image = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")
    return RenderedScene(scene=scene, image=image, labels=labels, masks=masks)


def _free(box: tuple[float, float, float, float], taken: list[tuple[float, float, float, float]], gap: float = 6) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0 for a0, b0, a1, b1 in taken)


def place(rng: np.random.Generator, scene: ScenePlan, category: str, width: float, taken: list,
          x_range: tuple[float, float] | None = None, colour: str | None = None, flip: bool | None = None) -> PlannedObject | None:
    """Put one object of `category` and box width `width` (px) where it overlaps nothing in `taken`.

    x_range restricts the centre's x (a band of the image, for left/middle/right layouts). Returns
    None when no free spot was found (the caller shrinks or skips it); on success the box is added to `taken`.
    """
    w = float(width)
    h = w * ASPECT[category]
    limit_h = scene.height - 2 * MARGIN
    if h > limit_h:
        w, h = w * limit_h / h, float(limit_h)
    lo, hi = x_range or (0.0, float(scene.width))
    lo, hi = max(lo, MARGIN + w / 2), min(hi, scene.width - MARGIN - w / 2)
    ylo, yhi = MARGIN + h / 2, scene.height - MARGIN - h / 2
    if lo > hi or ylo > yhi:
        return None
    for _ in range(200):
        cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(ylo, yhi))
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if _free(box, taken):
            taken.append(box)
            return PlannedObject(category, colour or str(rng.choice(list(COLOURS))), round(cx, 1), round(cy, 1),
                               round(w, 1), round(h, 1), flip=bool(rng.integers(2)) if flip is None else flip)
    return None


def new_scene(rng: np.random.Generator, width: int, height: int, kind: str = "mixed") -> ScenePlan:
    """An empty scene with a random stuff background and its own texture seed."""
    return ScenePlan(width=width, height=height, upper=str(rng.choice(list(UPPER_STUFF))),
                 lower=str(rng.choice(list(LOWER_STUFF))), horizon=round(float(rng.uniform(0.35, 0.6)), 3),
                 noise_seed=int(rng.integers(2**31)), unlabeled_band=int(rng.choice([0, 2, 3])), kind=kind)


def _distinct_colours(rng: np.random.Generator, n: int) -> list[str]:
    return [str(c) for c in rng.choice(list(COLOURS), size=n, replace=False)]


def _row(rng: np.random.Generator, scene: ScenePlan, category: str, n: int, colours: list[str], taken: list,
         scales: list[float]) -> list[PlannedObject]:
    """n objects of one category in n side-by-side bands (so left/middle/right is unambiguous)."""
    band = scene.width / n
    out = []
    for i in range(n):
        width = min(band - 12, scene.width * 0.3) * scales[i]
        for _ in range(6):
            obj = place(rng, scene, category, width, taken, (band * i + 6, band * (i + 1) - 6), colours[i])
            if obj is not None:
                out.append(obj)
                break
            width *= 0.8
    return out


def plan_scene(rng: np.random.Generator, width: int, height: int, kind: str, category: str | None = None) -> ScenePlan:
    """A scene of the given kind (see the module docstring); `category` fixes the repeated/main category."""
    if kind not in SCENE_KINDS:
        raise ValueError(f"scene kind {kind!r} unknown; expected one of {SCENE_KINDS}")
    scene = new_scene(rng, width, height, kind)
    taken: list = []
    main = category or ("person" if kind == "people" else str(rng.choice(COMMON)))
    if kind in ("multi", "people", "colours"):
        n = int(rng.integers(2, 4))
        # Sizes differ by ≥ 1.45× in width (≥ 2× in area) so bigger/smaller is never a close call.
        scales = [float(s) for s in rng.permutation([1.0, 0.68, 0.47][:n])]
        colours = _distinct_colours(rng, n) if kind != "multi" else [str(rng.choice(list(COLOURS)))] * n
        if kind == "multi" and n == 3:
            colours[int(rng.integers(3))] = _distinct_colours(rng, 1)[0]  # same colour for some, not all
        scene.objects = _row(rng, scene, main, n, colours, taken, scales)
    elif kind == "mirror":
        mw, mh = int(width * 0.3), int(height * 0.6)
        left = bool(rng.integers(2))
        mx = MARGIN + 6 if left else width - mw - MARGIN - 6
        mirror = Mirror(mx, int(height * 0.12), mw, mh, frame=max(4, mw // 20))
        scene.mirrors = [mirror]
        taken.append((mirror.x, mirror.y, mirror.x + mirror.w, mirror.y + mirror.h))
        side = (width * 0.45, width - MARGIN) if left else (MARGIN, width * 0.55)
        obj = place(rng, scene, main, width * 0.22, taken, side)
        if obj is None:
            raise RuntimeError("mirror scene: no room for the reflected object; use a larger image")
        gx, gy, gw, gh = mirror.glass
        scale = min(0.75 * gw / obj.w, 0.75 * gh / obj.h)
        reflection = PlannedObject(main, obj.colour, round(gx + gw / 2, 1), round(gy + gh / 2, 1),
                                 round(obj.w * scale, 1), round(obj.h * scale, 1), flip=not obj.flip, in_mirror=True)
        scene.objects = [obj, reflection]
    elif kind == "crowd":
        cw, ch = width * 0.4, height * 0.3
        x0 = float(rng.uniform(MARGIN, width - cw - MARGIN))
        y0 = float(rng.uniform(MARGIN, height - ch - MARGIN))
        taken.append((x0, y0, x0 + cw, y0 + ch))
        k = int(rng.integers(5, 9))
        pw = cw / (k + 1)
        parts = [(round(x0 + pw * (i + 1), 1), round(y0 + ch / 2 + float(rng.uniform(-0.1, 0.1)) * ch, 1),
                  round(pw * 0.7, 1), round(ch * 0.75, 1)) for i in range(k)]
        crowd = PlannedObject("person", str(rng.choice(list(COLOURS))), round(x0 + cw / 2, 1), round(y0 + ch / 2, 1),
                            round(cw, 1), round(ch, 1), crowd=True, parts=parts)
        scene.objects = [crowd]
    if kind in ("mixed", "crowd", "mirror"):
        n_extra = {"mixed": int(rng.integers(2, 5)), "crowd": int(rng.integers(1, 3)), "mirror": int(rng.integers(0, 2))}[kind]
        used = {o.category for o in scene.objects}
        pool = [c for c in COMMON if c not in used]
        for cat in rng.choice(pool, size=n_extra, replace=False):
            obj = place(rng, scene, str(cat), float(rng.uniform(0.14, 0.26)) * width, taken)
            if obj is not None:
                scene.objects.append(obj)
    if kind == "mixed" and category and all(o.category != category for o in scene.objects):
        raise RuntimeError(f"mixed scene: could not place the requested {category!r}")
    if not scene.objects:
        raise RuntimeError(f"{kind} scene {width}x{height}: no object could be placed")
    return scene


def place_category_first(rng: np.random.Generator, width: int, height: int, category: str, extra: int = 2) -> ScenePlan:
    """A mixed scene whose first object is `category` (for datasets that need a given target)."""
    scene = new_scene(rng, width, height, "mixed")
    taken: list = []
    first = place(rng, scene, category, float(rng.uniform(0.2, 0.3)) * width, taken)
    if first is None:
        raise RuntimeError(f"could not place {category!r} in a {width}x{height} scene")
    scene.objects.append(first)
    pool = [c for c in ("car", "dog", "cat", "bird", "apple", "vase", "book", "kite", "chair", "cake") if c != category]
    for cat in rng.choice(pool, size=extra, replace=False):
        obj = place(rng, scene, str(cat), float(rng.uniform(0.14, 0.22)) * width, taken)
        if obj is not None:
            scene.objects.append(obj)
    return scene


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO bbox [x, y, w, h] of a mask (what pycocotools.mask.toBbox returns for its RLE)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def object_truth(obj: PlannedObject, mask: np.ndarray) -> dict[str, Any]:
    """The scenes.json record of one rendered object."""
    ys, xs = np.nonzero(mask)
    centroid = [round(float(xs.mean()), 2), round(float(ys.mean()), 2)] if len(xs) else [0.0, 0.0]
    return {
        "ann_id": obj.ann_id, "category_id": obj.category_id, "category": obj.category, "colour": obj.colour,
        "rgb": list(COLOURS[obj.colour]), "bbox": mask_bbox(mask), "area": int(mask.sum()), "centroid": centroid,
        "in_mirror": obj.in_mirror, "iscrowd": obj.crowd,
    }


def scene_truth(rendered: RenderedScene) -> dict[str, Any]:
    """Size, kind, background, objects and mirrors of a rendered scene (the shared part of a scenes.json record)."""
    s = rendered.scene
    return {
        "width": s.width, "height": s.height, "kind": s.kind, "background": {"upper": s.upper, "lower": s.lower},
        "objects": [object_truth(o, m) for o, m in zip(s.objects, rendered.masks)],
        "mirrors": [{"bbox": [m.x, m.y, m.w, m.h], "glass_bbox": list(m.glass)} for m in s.mirrors],
    }


def clean_plate(scene: Scene, ann_id: int) -> RenderedScene:
    """The scene rendered without object ``ann_id``: what a perfect removal of it looks like.

    The background and every other object are seeded by the plan, not by draw order, so only the pixels
    the object covered (and did not lie under a later object) change.
    """
    without = scene.copy()
    kept = [o for o in without.objects if o.ann_id != ann_id]
    if len(kept) == len(without.objects):
        raise KeyError(f"scene has no object with ann_id {ann_id}")
    without.objects = kept
    return render(without)
