"""Instructions that mean one edit of one object: the uniqueness check, the paraphrase validator (with the
exact failures found in review), one pair per object, recolour only for one-coloured objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.synthetic.config import SCENARIOS, SyntheticConfig
from pipeline.synthetic.instructions import EditJob, load_templates
from pipeline.synthetic.knowledge import load_knowledge
from pipeline.synthetic.paraphrase import valid_paraphrase
from pipeline.synthetic.referents import ambiguous_referent, described
from pipeline.synthetic.scene import ImageRecord, Scene, SceneObject

CFG = SyntheticConfig()


def _obj(ann_id, category, x, area=400, colour="red", in_mirror=False):
    return SceneObject(ann_id=ann_id, category=category, category_id=1, bbox=(x - 10, 20, 20, 20), area=area,
                       centroid=(float(x), 30.0), colour=colour, colour_share=0.9, in_mirror=in_mirror, crowd=False)


def _scene(*objects):
    record = ImageRecord("val2017", 1, "x.jpg", Path("x.jpg"), 200, 100, Path("a.json"))
    return Scene(record, list(objects))


def _job(instruction, operation="remove", scenario="left_right", category="dog", **extra):
    return EditJob(key="k", split="s", image_id=1, file_name="f", image_path="p", annotations="a", width=8, height=8,
                   scenario=scenario, selector={}, target={"ann_id": 1, "category": category}, operation=operation,
                   referent="", instructions=[instruction], target_description="", prompt="", source_caption="",
                   target_caption="", seed=0, **extra)


def test_knowledge_description_fitting_two_objects_is_ambiguous():
    # "the furniture you lie on to watch television" is the couch's description; a bed fits it too
    knowledge = load_knowledge()
    assert "the furniture you lie on to watch television" in knowledge.descriptions("couch")
    couch, bed, cup = _obj(1, "couch", 50), _obj(2, "bed", 150), _obj(3, "cup", 100)
    reject = ambiguous_referent(_scene(couch, bed), "reasoning", couch, {"knowledge": "couch"}, knowledge, CFG, "w")
    assert reject is not None and reject.reason == "ambiguous_referent" and "bed#2" in reject.detail
    assert ambiguous_referent(_scene(couch, cup), "reasoning", couch, {"knowledge": "couch"}, knowledge, CFG, "w") is None


@pytest.mark.parametrize("scenario, selector, objects, target, unique", [
    ("left_right", {"position": "left"}, [(1, 20), (2, 120)], 1, True),
    ("left_right", {"position": "left"}, [(1, 20), (2, 25)], 1, False),  # 5 px apart in 200: within the margin
    ("left_right", {"position": "middle"}, [(1, 20), (2, 100), (3, 180)], 2, True),
    ("multiple_objects", {"side": "right", "ordinal": 2}, [(1, 20), (2, 100), (3, 180)], 2, True),
    ("relative_size", {"size": "bigger"}, [(1, 20, 900), (2, 120, 400)], 1, True),
    ("relative_size", {"size": "bigger"}, [(1, 20, 500), (2, 120, 400)], 1, False),  # 1.25x < size_ratio 1.5
])
def test_spatial_and_size_descriptions_must_fit_one_object(scenario, selector, objects, target, unique):
    objs = [_obj(o[0], "dog", o[1], *(o[2:] or ())) for o in objects]
    goal = next(o for o in objs if o.ann_id == target)
    reject = ambiguous_referent(_scene(*objs), scenario, goal, selector, load_knowledge(), CFG, "w")
    assert (reject is None) == unique


def test_colour_and_mirror_descriptions():
    a, b, c = _obj(1, "cup", 20, colour="red"), _obj(2, "cup", 100, colour="blue"), _obj(3, "cup", 180, colour="red")
    assert [o.ann_id for o in described(_scene(a, b, c), "colour", {"colour": "red"}, {"cup"}, CFG)] == [1, 3]
    assert [o.ann_id for o in described(_scene(a, b), "colour", {"colour": "red"}, {"cup"}, CFG)] == [1]
    r = _obj(4, "cup", 150, in_mirror=True)
    assert [o.ann_id for o in described(_scene(a, r), "mirror", {"mirror": True}, {"cup"}, CFG)] == [4]


def test_relations_to_another_object_only_when_they_single_the_target_out():
    from pipeline.synthetic.referents import relation

    near, far, laptop = _obj(1, "dog", 40), _obj(2, "dog", 170), _obj(3, "laptop", 70)
    assert relation(_scene(near, far, laptop), near) == ("next_to", "laptop")
    assert relation(_scene(near, far, laptop), far) is None  # the far dog is not "next to the laptop"
    twin = _obj(4, "dog", 100)  # as near to the laptop as the first dog: no longer unique
    assert relation(_scene(near, twin, laptop), near) is None
    assert relation(_scene(near, far, laptop, _obj(5, "laptop", 150)), near) is None  # two laptops: no anchor
    table = SceneObject(ann_id=6, category="dining table", category_id=67, bbox=(20, 50, 60, 20), area=1200,
                        centroid=(50.0, 60.0), colour=None, colour_share=0.3, in_mirror=False, crowd=False)
    cup = SceneObject(ann_id=7, category="cup", category_id=47, bbox=(40, 30, 10, 10), area=80,
                      centroid=(45.0, 35.0), colour="red", colour_share=0.9, in_mirror=False, crowd=False)
    other_cup = _obj(8, "cup", 180)
    assert relation(_scene(table, cup, other_cup), cup) == ("above", "dining table")


def test_paraphrase_validator_rejects_the_reviewed_failures():
    t = load_templates()
    # the exact cases the review found accepted
    assert valid_paraphrase("Remove the right dog", _job("Remove the left dog"), t) is None
    reasoning = _job("Remove the object that can tell the time", scenario="reasoning", category="clock")
    assert valid_paraphrase("Remove the clock", reasoning, t) is None
    # meaning-preserving rewrites pass
    assert valid_paraphrase("Erase the dog on the left", _job("Remove the left dog"), t) == "Erase the dog on the left"
    assert valid_paraphrase("Take away the leftmost dog", _job("Remove the left dog"), t) == "Take away the leftmost dog"
    assert valid_paraphrase("Delete the thing that shows the time", reasoning, t) == "Delete the thing that shows the time"


@pytest.mark.parametrize("original, paraphrase", [
    ("Remove the bigger cup", "Remove the smaller cup"),  # size flipped
    ("Remove the larger cup", "Remove the cup"),  # size word lost
    ("Remove the second cup from the left", "Remove the third cup from the left"),  # ordinal changed
    ("Remove the red cup", "Remove the blue cup"),  # colour changed
    ("Remove the left dog", "Do not remove the left dog"),  # negation added
    ("Remove the left dog", "Remove the left dog and the cat"),  # object added
    ("Remove the left dog", "Remove the left hot dog"),  # a different object that contains the word
])
def test_paraphrase_validator_keeps_meaning_words(original, paraphrase):
    t = load_templates()
    assert valid_paraphrase(paraphrase, _job(original), t) is None


def test_paraphrase_validator_operation_content():
    t = load_templates()
    job = _job("Replace the left dog with a white fox", operation="replace", new_object="fox", new_colour="white")
    assert valid_paraphrase(" Swap the dog on the left for a white fox.\nmore", job, t) == "Swap the dog on the left for a white fox."
    assert valid_paraphrase("", job, t) is None
    assert valid_paraphrase("Swap the dog on the left for a fox", job, t) is None  # lost the colour
    assert valid_paraphrase("replace the left dog with a white fox", job, t) is None  # a copy
    assert valid_paraphrase("ĠxĠ@@ white fox ###", job, t) is None  # garbled
    assert valid_paraphrase("Make the dog on the left happy", _job("Remove the left dog"), t) is None  # no removal


def test_one_pair_per_object_and_recolour_needs_a_dominant_colour(tmp_path):
    from synthetic_fixtures import make_scenes

    from pipeline.synthetic.build import BuildInputs, plan_build

    root = make_scenes(tmp_path / "scenes")
    plan = plan_build(SyntheticConfig(scenarios={s: 10 for s in SCENARIOS}, leakage_guard=False), BuildInputs(input=str(root)), tmp_path / "a")
    jobs = [e["job"] for e in plan["entries"] if "job" in e]
    targets = [(j["file_name"], j["target"]["ann_id"]) for j in jobs]
    assert len(targets) == len(set(targets))
    assert any(e["reject"]["reason"] == "duplicate_target" for e in plan["entries"] if "reject" in e)
    cfg = SyntheticConfig(scenarios={s: 10 for s in SCENARIOS}, operations=["recolour"], colour_min_share=1.01,
                          leakage_guard=False)
    plan = plan_build(cfg, BuildInputs(input=str(root)), tmp_path / "b")
    reasons = {e["reject"]["reason"] for e in plan["entries"] if "reject" in e}
    assert "no_dominant_colour" in reasons
    assert not any(e["job"]["operation"] == "recolour" for e in plan["entries"] if "job" in e)


def test_cross_category_replacements_come_from_the_swap_table(tmp_path):
    from synthetic_fixtures import make_scenes

    from pipeline.synthetic.build import BuildInputs, plan_build
    from pipeline.synthetic.knowledge import load_swaps

    swaps = load_swaps()
    knowledge = load_knowledge()
    assert swaps["person"][0] == "dog" and set(swaps) <= set(knowledge.categories)
    root = make_scenes(tmp_path / "scenes")
    plans = {}
    for share in (1.0, 0.0):
        cfg = SyntheticConfig(scenarios={s: 10 for s in SCENARIOS}, operations=["replace"], cross_category_share=share,
                              leakage_guard=False)
        plan = plan_build(cfg, BuildInputs(input=str(root)), tmp_path / f"p{share}")
        plans[share] = [e["job"] for e in plan["entries"] if "job" in e]
    for job in plans[1.0]:
        category = job["target"]["category"]
        assert job["new_object"] in (swaps.get(category) or knowledge.replacements(category))
        assert job["new_object"] in job["instructions"][0]
    assert any(j["new_object"] in swaps.get(j["target"]["category"], ()) and
               j["new_object"] not in knowledge.replacements(j["target"]["category"]) for j in plans[1.0])
    assert all(j["new_object"] in knowledge.replacements(j["target"]["category"]) for j in plans[0.0])
