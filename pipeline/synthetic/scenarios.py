"""Scenario and target selection for the six Reason-Edit categories.

Per scene and scenario one candidate at most: a target object and how it is singled out (left/right/
middle, bigger/smaller, its colour, in the mirror, ordinal position, or a world-knowledge description).
Where the scenario applies but the pick would be ambiguous, the candidate becomes a `Reject` with the
reason; where it does not apply (no two objects of a category, no mirror) nothing is yielded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.config import SCENARIOS, SyntheticConfig
from pipeline.synthetic.knowledge import Knowledge
from pipeline.synthetic.mask_area import mask_area_reject
from pipeline.synthetic.referents import ambiguous_referent
from pipeline.synthetic.scene import Scene, SceneObject
from pipeline.synthetic.stages import Stage


def derived_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from the build seed and parts (Python's hash() is salted per process)."""
    text = "\x1f".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def scenario_rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(derived_seed(seed, *parts))


@dataclass
class EditCandidate:
    scene: Scene
    scenario: str
    target: SceneObject
    selector: dict[str, Any]  # how the target is singled out: {"position": "left"}, {"size": "bigger"}, ...
    same_kind_unique: bool  # no other object of the target's kind: its kind noun ("animal") is unambiguous
    n_same_category: int


@dataclass
class Quota:
    """Pairs still wanted per scenario; selection stops reading scenes once every quota is met."""

    remaining: dict[str, int]
    taken: dict[str, int] = field(default_factory=dict)

    def open(self, scenario: str) -> bool:
        return self.remaining.get(scenario, 0) > 0

    def full(self) -> bool:
        return not any(v > 0 for v in self.remaining.values())

    def take(self, scenario: str) -> None:
        self.remaining[scenario] -= 1
        self.taken[scenario] = self.taken.get(scenario, 0) + 1


Picked = tuple[SceneObject, dict[str, Any]] | Reject | None


def _pick_category(groups: dict[str, list[SceneObject]], minimum: int, rng: np.random.Generator) -> str | None:
    eligible = sorted(c for c, objs in groups.items() if len(objs) >= minimum)
    return str(rng.choice(eligible)) if eligible else None


def _gap(scene: Scene, ordered: list[SceneObject], idx: int) -> float:
    """Smallest centroid-x gap between ordered[idx] and its neighbours, as a fraction of the image width."""
    xs = [o.centroid[0] for o in ordered]
    gaps = [abs(xs[idx] - xs[j]) for j in (idx - 1, idx + 1) if 0 <= j < len(xs)]
    return min(gaps) / scene.record.width


def _duplicate(where: str) -> Reject:
    return Reject(where, "duplicate_target", "every object this scenario could pick is already the target of another "
                                             "pair of this image (one pair per object)")


def pick_left_right(scene: Scene, groups, rng, cfg: SyntheticConfig, where: str, edited=frozenset()) -> Picked:
    category = _pick_category(groups, 2, rng)
    if category is None:
        return None
    ordered = sorted(groups[category], key=lambda o: o.centroid[0])
    at = {"left": 0, "right": len(ordered) - 1, "middle": 1}
    options = [p for p in ["left", "right"] + (["middle"] if len(ordered) == 3 else []) if ordered[at[p]].ann_id not in edited]
    if not options:
        return _duplicate(where)
    position = str(rng.choice(options))
    idx = at[position]
    gap = _gap(scene, ordered, idx)
    if gap < cfg.position_margin:
        return Reject(where, "ambiguous_position", f"the {position} {category} is only {gap:.3f} of the width "
                                                   f"from the next one (margin {cfg.position_margin})")
    return ordered[idx], {"position": position}


def pick_relative_size(scene: Scene, groups, rng, cfg: SyntheticConfig, where: str, edited=frozenset()) -> Picked:
    category = _pick_category(groups, 2, rng)
    if category is None:
        return None
    ordered = sorted(groups[category], key=lambda o: -o.area)
    options = [s for s, o in (("large", ordered[0]), ("small", ordered[-1])) if o.ann_id not in edited]
    if not options:
        return _duplicate(where)
    big = str(rng.choice(options)) == "large"
    target, runner_up = (ordered[0], ordered[1]) if big else (ordered[-1], ordered[-2])
    ratio = max(target.area, runner_up.area) / max(1, min(target.area, runner_up.area))
    if ratio < cfg.size_ratio:
        return Reject(where, "size_ratio_too_small",
                      f"{category} areas {target.area} and {runner_up.area} differ by {ratio:.2f}x < {cfg.size_ratio}")
    word = ("bigger" if big else "smaller") if len(ordered) == 2 else ("biggest" if big else "smallest")
    return target, {"size": word, "area_ratio": round(ratio, 3)}


def pick_colour(scene: Scene, groups, rng, cfg: SyntheticConfig, where: str, edited=frozenset()) -> Picked:
    category = _pick_category(groups, 2, rng)
    if category is None:
        return None
    objs = groups[category]
    if any(o.colour is None for o in objs):
        return Reject(where, "colour_uncertain", f"a {category} has no dominant colour (share < {cfg.colour_min_share})")
    names = [o.colour for o in objs]
    unique = [o for o in objs if names.count(o.colour) == 1]
    if not unique:
        return Reject(where, "colours_not_distinct", f"the {category}s share their colours: {sorted(names)}")
    unique = [o for o in unique if o.ann_id not in edited]
    if not unique:
        return _duplicate(where)
    target = unique[int(rng.integers(len(unique)))]
    return target, {"colour": target.colour}


def pick_mirror(scene: Scene, groups, rng, cfg: SyntheticConfig, where: str, edited=frozenset()) -> Picked:
    if not scene.mirrors:
        return None
    reflected: dict[str, list[SceneObject]] = {}
    for obj in scene.objects:
        if obj.in_mirror:
            reflected.setdefault(obj.category, []).append(obj)
    if not reflected:
        return Reject(where, "no_object_in_mirror", "the scene has a mirror but no object box lies inside it")
    single = sorted(c for c, objs in reflected.items() if len(objs) == 1)
    if not single:
        return Reject(where, "ambiguous_mirror", f"several reflected objects per category: {sorted(reflected)}")
    single = [c for c in single if reflected[c][0].ann_id not in edited]
    if not single:
        return _duplicate(where)
    return reflected[str(rng.choice(single))][0], {"mirror": True}


def pick_multiple(scene: Scene, groups, rng, cfg: SyntheticConfig, where: str, edited=frozenset()) -> Picked:
    category = _pick_category(groups, 3, rng)
    if category is None:
        return None
    ordered = sorted(groups[category], key=lambda o: o.centroid[0])
    n = len(ordered)
    free = [i for i, o in enumerate(ordered) if o.ann_id not in edited]
    if not free:
        return _duplicate(where)
    idx = free[int(rng.integers(len(free)))]
    gap = _gap(scene, ordered, idx)
    if gap < cfg.position_margin:
        return Reject(where, "ambiguous_position", f"{category} #{idx + 1} of {n} is only {gap:.3f} of the width "
                                                   f"from a neighbour (margin {cfg.position_margin})")
    side, ordinal = ("left", idx + 1) if idx < (n + 1) // 2 else ("right", n - idx)
    return ordered[idx], {"side": side, "ordinal": ordinal, "count": n}


def pick_reasoning(scene: Scene, groups, rng, cfg: SyntheticConfig, where: str,
                   knowledge: Knowledge | None = None, edited=frozenset()) -> Picked:
    counts: dict[str, int] = {}
    for obj in scene.objects:  # reflections count: "the pet that purrs" must have one answer
        counts[obj.category] = counts.get(obj.category, 0) + 1
    crowded = scene.crowded()  # a crowd annotation is several instances: "the sheep" would not be one object
    single = sorted(c for c, n in counts.items()
                    if n == 1 and c not in crowded and knowledge is not None and c in knowledge.categories)
    if not single:
        return Reject(where, "reasoning_ambiguous", f"no category appears exactly once with knowledge: {counts}")
    single = [c for c in single if next(o for o in scene.objects if o.category == c).ann_id not in edited]
    if not single:
        return _duplicate(where)
    category = str(rng.choice(single))
    target = next(o for o in scene.objects if o.category == category)
    return target, {"knowledge": category}


PICKERS: dict[str, Callable[..., Picked]] = {
    "left_right": pick_left_right, "relative_size": pick_relative_size, "colour": pick_colour,
    "mirror": pick_mirror, "multiple_objects": pick_multiple, "reasoning": pick_reasoning,
}


class ScenarioSelection(Stage):
    """Scene → at most one candidate per open scenario; stops reading scenes when every quota is met."""

    name = "scenario_selection"
    fan_out = True

    def __init__(self, cfg: SyntheticConfig, knowledge: Knowledge, quota: Quota):
        self.cfg, self.knowledge, self.quota = cfg, knowledge, quota

    def exhausted(self) -> bool:
        return self.quota.full()

    def process(self, scene: Scene) -> Iterator[EditCandidate | Reject]:
        cfg, knowledge, quota = self.cfg, self.knowledge, self.quota
        crowded = scene.crowded()
        groups = {c: objs for c, objs in scene.by_category().items()
                  if c not in crowded and c in knowledge.categories}
        edited: dict[int, str] = {}  # ann_id → the scenario that already edits it (one pair per object)
        for scenario in SCENARIOS:
            if not quota.open(scenario):
                continue
            where = f"{scene.record.location}:{scenario}"
            rng = scenario_rng(cfg.seed, scene.record.location, scenario)
            kwargs = {"knowledge": knowledge} if scenario == "reasoning" else {}
            # one pair per object: the same object edited twice gives near-identical targets
            picked = PICKERS[scenario](scene, groups, rng, cfg, where, edited=frozenset(edited), **kwargs)
            if picked is None:
                continue
            if isinstance(picked, Reject):
                yield picked
                continue
            target, selector = picked
            if target.category not in knowledge.categories:
                continue  # no noun, descriptions or replacements for it (non-COCO category)
            ambiguous = ambiguous_referent(scene, scenario, target, selector, knowledge, cfg, where)
            if ambiguous is not None:
                yield ambiguous
                continue
            too_small_or_large = mask_area_reject(target.area / (scene.record.width * scene.record.height), cfg,
                                                  where, "target mask")
            if too_small_or_large is not None:
                yield too_small_or_large
                continue
            # "the left animal" only when no other category in view (in or out of the mirror) is an
            # animal; the catch-all noun "object" only when the target's category is all there is.
            noun = knowledge.noun(target.category)
            rivals = [o for o in scene.objects if o.in_mirror == target.in_mirror and o.category != target.category
                      and (noun == "object" or knowledge.kind_of.get(o.category) is None
                           or knowledge.noun(o.category) == noun)]
            unique_kind = not rivals
            quota.take(scenario)
            edited[target.ann_id] = scenario
            yield EditCandidate(scene, scenario, target, selector, unique_kind,
                                sum(o.category == target.category for o in scene.objects))
