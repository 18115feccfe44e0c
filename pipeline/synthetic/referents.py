"""Uniqueness check: a referring description must fit exactly one object in the scene.

Each scenario's description is evaluated afresh over the scene's objects, independently of how the
picker chose the target: "the left dog" = the dog with the smallest centroid x, and no other dog within
position_margin of it; "the bigger cup" = the largest cup, at least size_ratio larger than the next;
"the red cup" = the cups named red; "the cup in the mirror" = reflected cups; "the second cup from the
right" = by centroid x; a knowledge description ("the furniture you lie on to watch television") fits
its category and every category it may be confused with (`confusable` in data_specs/knowledge.yaml).
Anything other than exactly the target is `ambiguous_referent`.

Relative size is measured in image area, which on real photos also depends on distance: the rule only
compares objects of one category, in the same view (not reflections), with a clear margin (size_ratio,
default 1.5×), so a nearer object of the same kind has to look clearly larger, not just be so.
"""

from __future__ import annotations

from typing import Any

from pipeline.records import Reject
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.knowledge import Knowledge
from pipeline.synthetic.scene import Scene, SceneObject


def described(scene: Scene, scenario: str, selector: dict[str, Any], categories: set[str] | frozenset[str],
              cfg: SyntheticConfig) -> list[SceneObject]:
    """The objects of ``scene`` that the description (scenario + selector over ``categories``) fits."""
    pool = [o for o in scene.objects if o.category in categories and (scenario == "reasoning" or not o.crowd)]
    if scenario == "reasoning":
        return pool  # reflections count: "the pet that purrs" must have one answer
    if scenario == "mirror":
        return [o for o in pool if o.in_mirror]
    pool = [o for o in pool if not o.in_mirror]
    if not pool:
        return []
    margin = cfg.position_margin * scene.record.width
    xs = sorted(pool, key=lambda o: o.centroid[0])
    if scenario == "left_right":
        position = selector["position"]
        if position == "middle":
            gaps_ok = len(xs) == 3 and min(xs[1].centroid[0] - xs[0].centroid[0],
                                           xs[2].centroid[0] - xs[1].centroid[0]) >= margin
            return [xs[1]] if gaps_ok else xs
        edge = xs[0] if position == "left" else xs[-1]
        return [o for o in xs if abs(o.centroid[0] - edge.centroid[0]) < margin]
    if scenario == "relative_size":
        big = selector["size"] in ("bigger", "biggest", "larger", "largest")
        by_area = sorted(pool, key=lambda o: -o.area if big else o.area)
        best = by_area[0]
        return [o for o in by_area if o is best or max(o.area, best.area) / max(1, min(o.area, best.area)) < cfg.size_ratio]
    if scenario == "colour":
        return [o for o in pool if o.colour == selector["colour"]]
    if scenario == "multiple_objects":
        ordered = xs if selector["side"] == "left" else xs[::-1]
        k = selector["ordinal"] - 1
        if k >= len(ordered):
            return []
        pick = ordered[k]
        return [o for o in ordered if abs(o.centroid[0] - pick.centroid[0]) < margin]
    raise ValueError(f"scenario {scenario!r}: no uniqueness rule")


def ambiguous_referent(scene: Scene, scenario: str, target: SceneObject, selector: dict[str, Any],
                       knowledge: Knowledge, cfg: SyntheticConfig, where: str) -> Reject | None:
    """A Reject unless the description picks exactly ``target`` (by its category noun, or for reasoning
    by any category the knowledge description may fit)."""
    categories = knowledge.fits(target.category) if scenario == "reasoning" else {target.category}
    matches = described(scene, scenario, selector, categories, cfg)
    if len(matches) == 1 and matches[0] is target:
        return None
    names = sorted(f"{o.category}#{o.ann_id}" for o in matches)
    return Reject(where, "ambiguous_referent", f"the {scenario} description {selector} fits {names or 'nothing'}, "
                                                f"not exactly {target.category}#{target.ann_id}")


NEAR_RATIO = 1.5  # "next to the laptop": the nearest dog to the laptop, the next one this much farther away


def relation(scene: Scene, target: SceneObject) -> tuple[str, str] | None:
    """(relation, anchor category) that singles ``target`` out among its category, or None.

    The anchor is a category seen exactly once (outside mirrors). "above"/"below": the target's centroid
    lies over the anchor's box horizontally and above its top (below its bottom), and no other object of
    the target's category does; "next_to": the target is the anchor's nearest object of its category and
    every other one is NEAR_RATIO times farther.
    """
    same = [o for o in scene.objects if o.category == target.category and not o.in_mirror]
    counts: dict[str, int] = {}
    for o in scene.objects:
        if not o.in_mirror:
            counts[o.category] = counts.get(o.category, 0) + 1
    anchors = sorted((o for o in scene.objects if not o.in_mirror and o.category != target.category
                      and counts[o.category] == 1 and not o.crowd), key=lambda o: o.ann_id)

    def over(o: SceneObject, a: SceneObject, side: str) -> bool:
        x, y, w, h = a.bbox
        if not x <= o.centroid[0] <= x + w:
            return False
        return o.bbox[1] + o.bbox[3] <= y if side == "above" else o.bbox[1] >= y + h

    for anchor in anchors:
        for side in ("above", "below"):
            fits = [o for o in same if over(o, anchor, side)]
            if fits == [target]:
                return side, anchor.category
        dist = sorted(((o.centroid[0] - anchor.centroid[0]) ** 2 + (o.centroid[1] - anchor.centroid[1]) ** 2) ** 0.5
                      for o in same if o is not target)
        mine = ((target.centroid[0] - anchor.centroid[0]) ** 2 + (target.centroid[1] - anchor.centroid[1]) ** 2) ** 0.5
        near = max(anchor.bbox[2], anchor.bbox[3], target.bbox[2], target.bbox[3]) * 1.5
        if mine <= near and all(d >= NEAR_RATIO * mine for d in dist):
            return "next_to", anchor.category
    return None
