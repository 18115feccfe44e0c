"""Polygon outlines of the rendered objects, one simple silhouette per COCO category.

Each shape is a list of parts in a unit box [-0.5, 0.5]² (x right, y down); `category_polygons`
scales it into a box and returns COCO flat polygons ``[x1, y1, x2, y2, ...]``. Several parts make a
multi-polygon annotation (COCO's way of writing an object split by occlusion), which converters
must union. Coordinates are rounded to 2 decimals so the annotated and the drawn polygon are the
same numbers.
"""

from __future__ import annotations

import math

Part = list[tuple[float, float]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28, start: float = 0.0, end: float = 2 * math.pi) -> Part:
    closed = abs(end - start - 2 * math.pi) < 1e-9
    steps = n if closed else n - 1
    return [(cx + rx * math.cos(start + (end - start) * i / steps), cy + ry * math.sin(start + (end - start) * i / steps))
            for i in range(n)]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Part:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _regular(n: int, r: float = 0.5, phase: float = 0.0) -> Part:
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]


def _star(points: int = 5, outer: float = 0.5, inner: float = 0.22, cy: float = 0.0, scale_y: float = 1.0) -> Part:
    out = []
    for i in range(2 * points):
        r = outer if i % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * i / points
        out.append((r * math.cos(a), cy + scale_y * r * math.sin(a)))
    return out


# Unit-box silhouettes. The key is the COCO category name; the value builds the parts.
_SHAPES: dict[str, list[Part]] = {
    "person": [_ellipse(0.0, -0.36, 0.22, 0.13), _rect(-0.5, -0.2, 0.5, 0.5)],
    "car": [[(-0.5, 0.5), (0.5, 0.5), (0.5, 0.0), (0.3, 0.0), (0.15, -0.5), (-0.2, -0.5), (-0.35, 0.0), (-0.5, 0.0)]],
    "bus": [_rect(-0.5, -0.5, 0.5, 0.5)],
    "dog": [_ellipse(-0.1, 0.1, 0.4, 0.4), _ellipse(0.32, -0.22, 0.18, 0.26)],
    "cat": [_ellipse(0.0, 0.1, 0.5, 0.4), [(-0.4, -0.05), (-0.3, -0.5), (-0.1, -0.2)], [(0.1, -0.2), (0.3, -0.5), (0.4, -0.05)]],
    "bird": [[(-0.5, 0.1), (0.0, -0.5), (0.5, 0.0), (0.1, 0.5)]],
    "horse": [[(-0.5, -0.1), (-0.2, -0.5), (0.3, -0.4), (0.5, 0.0), (0.3, 0.5), (-0.3, 0.5)]],
    "sheep": [_ellipse(0.0, 0.0, 0.5, 0.5, n=20)],
    "cup": [[(-0.4, -0.5), (0.25, -0.5), (0.15, 0.5), (-0.3, 0.5)], _rect(0.27, -0.3, 0.5, 0.1)],
    "bottle": [[(-0.15, -0.5), (0.15, -0.5), (0.15, -0.2), (0.5, -0.05), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.05), (-0.15, -0.2)]],
    "apple": [_ellipse(0.0, 0.0, 0.5, 0.5, n=32)],
    "clock": [_ellipse(0.0, 0.0, 0.5, 0.5, n=36)],
    "vase": [[(0.0, -0.5), (0.3, -0.25), (0.5, 0.15), (0.25, 0.5), (-0.25, 0.5), (-0.5, 0.15), (-0.3, -0.25)]],
    "umbrella": [_ellipse(0.0, 0.0, 0.5, 0.5, n=24, start=math.pi, end=2 * math.pi), _rect(-0.04, 0.02, 0.04, 0.5)],
    "potted plant": [_star(7, 0.5, 0.25, cy=-0.15, scale_y=0.7), [(-0.3, 0.22), (0.3, 0.22), (0.2, 0.5), (-0.2, 0.5)]],
    "tv": [_rect(-0.5, -0.5, 0.5, 0.35), _rect(-0.15, 0.4, 0.15, 0.5)],
    "laptop": [[(-0.35, -0.5), (0.35, -0.5), (0.5, 0.5), (-0.5, 0.5)]],
    "chair": [[(-0.5, -0.5), (-0.25, -0.5), (-0.25, 0.0), (0.5, 0.0), (0.5, 0.5), (-0.5, 0.5)]],
    "sports ball": [_ellipse(0.0, 0.0, 0.5, 0.5, n=30)],
    "kite": [[(0.0, -0.5), (0.5, -0.1), (0.0, 0.5), (-0.5, -0.1)]],
    "book": [_rect(-0.5, -0.5, 0.5, 0.5)],
    "stop sign": [_regular(8, 0.5, math.pi / 8)],
    "teddy bear": [_ellipse(0.0, -0.28, 0.26, 0.22), _ellipse(0.0, 0.22, 0.4, 0.28), _ellipse(-0.22, -0.45, 0.08, 0.05),
                   _ellipse(0.22, -0.45, 0.08, 0.05)],
    "cake": [_rect(-0.5, -0.2, 0.5, 0.5), _rect(-0.35, -0.5, 0.35, -0.22)],
    "bench": [_rect(-0.5, -0.5, 0.5, -0.1), _rect(-0.5, 0.0, 0.5, 0.2), _rect(-0.45, 0.2, -0.35, 0.5),
              _rect(0.35, 0.2, 0.45, 0.5)],
    "elephant": [_ellipse(0.0, -0.05, 0.45, 0.4), [(0.35, -0.1), (0.5, -0.1), (0.5, 0.5), (0.42, 0.5)]],
}

# Height / width of each silhouette's box.
ASPECT: dict[str, float] = {
    "person": 2.2, "car": 0.55, "bus": 0.6, "dog": 0.75, "cat": 0.8, "bird": 0.8, "horse": 0.8, "sheep": 0.7,
    "cup": 1.0, "bottle": 2.2, "apple": 1.0, "clock": 1.0, "vase": 1.5, "umbrella": 0.8, "potted plant": 1.3,
    "tv": 0.75, "laptop": 0.7, "chair": 1.2, "sports ball": 1.0, "kite": 1.3, "book": 1.35, "stop sign": 1.0,
    "teddy bear": 1.3, "cake": 0.8, "bench": 0.5, "elephant": 0.85,
}
CATEGORIES: tuple[str, ...] = tuple(_SHAPES)


def category_polygons(category: str, cx: float, cy: float, w: float, h: float, flip: bool = False) -> list[list[float]]:
    """COCO flat polygons of `category`'s silhouette in the box centred at (cx, cy) of size w × h.

    flip mirrors the silhouette left-right (a reflection in a mirror is a flipped copy).
    """
    if category not in _SHAPES:
        raise ValueError(f"no silhouette for category {category!r}; known: {sorted(_SHAPES)}")
    sign = -1.0 if flip else 1.0
    return [[round(v, 2) for x, y in part for v in (cx + sign * x * w, cy + y * h)] for part in _SHAPES[category]]


def plural(category: str) -> str:
    """English plural of a category name, as used in referring expressions and questions."""
    irregular = {"person": "people", "sheep": "sheep", "bus": "buses", "bench": "benches"}
    return irregular.get(category, category + "s")
