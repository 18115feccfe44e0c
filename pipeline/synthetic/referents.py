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
