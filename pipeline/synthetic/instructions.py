"""Edit operation and instruction: replace / remove / recolour, phrased from data_specs templates.

The referent phrase says which object (its scenario: "the left dog", "the object that can tell the
time"); the operation template says what to do with it ("Replace {referent} with {new}"). Several
template × referent combinations are the pair's paraphrases; the first is its `instruction`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.records import Reject, make_key
from pipeline.schema import SPECS_DIR
from pipeline.synthetic.colour_naming import ColourTable
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.knowledge import Knowledge, load_swaps
from pipeline.synthetic.referents import relation
from pipeline.synthetic.scenarios import EditCandidate, derived_seed, scenario_rng
from pipeline.synthetic.stages import MapStage

TEMPLATES_PATH = SPECS_DIR / "instruction_templates" / "synthetic.yaml"


@dataclass(frozen=True)
class Templates:
    referents: dict[str, dict[str, list[str]]]
    ordinals: list[str]
    operations: dict[str, list[str]]
    remove_verbs: list[str]
    prompts: dict[str, str]
    llm_prompt: str
    question_operations: dict[str, list[str]] = None


@functools.cache
def load_templates(path: Path = TEMPLATES_PATH) -> Templates:
    doc = yaml.safe_load(Path(path).read_text())
    for name in ("referents", "ordinals", "operations", "remove_verbs", "prompts", "llm_prompt"):
        if name not in doc:
            raise ValueError(f"{path}: missing top-level field {name!r}")
    for op in ("replace", "remove", "recolour"):
        if not doc["operations"].get(op):
            raise ValueError(f"{path}: operations.{op} needs at least one template")
    return Templates(doc["referents"], doc["ordinals"], doc["operations"], doc["remove_verbs"], doc["prompts"],
                     doc["llm_prompt"], doc.get("question_operations") or {})


def with_article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


@dataclass
class EditJob:
    """One planned edit pair: everything the per-shard stages need, JSON-serialisable (the build plan)."""

    key: str
    split: str
    image_id: int
    file_name: str
    image_path: str
    annotations: str
    width: int
    height: int
    scenario: str
    selector: dict[str, Any]
    target: dict[str, Any]  # ann_id, category, bbox, area, centroid, colour, in_mirror
    operation: str
    referent: str
    instructions: list[str]
    target_description: str  # Reason-Edit's "CLIP:" text: what the edited region should show
    prompt: str  # inpainting prompt
    source_caption: str
    target_caption: str
    seed: int
    new_object: str | None = None
    new_colour: str | None = None
    paraphrased_by_llm: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return f"{self.split}/{self.file_name}#{self.target['ann_id']}:{self.scenario}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EditJob":
        return cls(**data)


def referent_phrases(cand: EditCandidate, knowledge: Knowledge, templates: Templates) -> list[str]:
    """The scenario's phrases for the target, then richer ones that still fit only it: leftmost/rightmost,
    combined attributes ("the red dog on the left", "the larger red cup") and relations to another object
    ("the cup next to the laptop"). The first phrase is the pair's `referent`."""
    category = cand.target.category
    nouns = [category] + ([knowledge.noun(category)] if cand.same_kind_unique and knowledge.noun(category) != category else [])
    sel = cand.selector
    table = templates.referents.get(cand.scenario, {})
    if cand.scenario == "reasoning":
        return list(knowledge.descriptions(category))
    extra: list[str] = []
    colour = cand.target.colour
    if cand.scenario == "left_right":
        forms, fill = table[sel["position"]], {}
        in_view = sum(o.category == category and not o.in_mirror for o in cand.scene.objects)
        if sel["position"] in ("left", "right") and in_view >= 3:
            extra += [f.format(noun=category) for f in table.get(sel["position"] + "most", ())]
        if colour:
            extra += [f.format(noun=category, colour=colour, position=sel["position"]) for f in table.get("with_colour", ())
                      if sel["position"] != "middle"]
    elif cand.scenario == "relative_size":
        forms, fill = table[sel["size"]], {}
        if colour:
            extra += [f.format(noun=category, colour=colour, size=sel["size"]) for f in table.get("with_colour", ())]
    elif cand.scenario == "colour":
        forms, fill = table["any"], {"colour": sel["colour"]}
    elif cand.scenario == "mirror":
        forms, fill = table["any"], {}
    elif cand.scenario == "multiple_objects":
        forms, fill = table[sel["side"]], {"ordinal": templates.ordinals[sel["ordinal"] - 1]}
    else:
        raise ValueError(f"scenario {cand.scenario!r} has no referent templates in {TEMPLATES_PATH}")
    if cand.scenario != "mirror" and not cand.target.in_mirror:
        rel = relation(cand.scene, cand.target)
        if rel is not None:
            extra += [f.format(noun=category, anchor=rel[1]) for f in templates.referents.get("relations", {}).get(rel[0], ())]
    return [form.format(noun=noun, **fill) for noun in nouns for form in forms] + extra


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


class PlanEdits(MapStage):
    """EditCandidate → EditJob: pick the operation and its content, write the paraphrases."""

    name = "instructions"

    def __init__(self, cfg: SyntheticConfig, knowledge: Knowledge, colours: ColourTable, templates: Templates):
        self.cfg, self.knowledge, self.colours, self.templates = cfg, knowledge, colours, templates

    def map(self, cand: EditCandidate) -> EditJob | Reject:
        cfg, knowledge, colours, templates = self.cfg, self.knowledge, self.colours, self.templates
        rec, obj = cand.scene.record, cand.target
        # Recolour needs one dominant colour (a person's skin, hair and clothes are not one colour).
        operations = [op for op in cfg.effective_operations() if op != "recolour" or obj.colour is not None]
        if not operations:
            return Reject(f"{rec.location}#{obj.ann_id}:{cand.scenario}", "no_dominant_colour",
                          f"{obj.category} has no colour covering {cfg.colour_min_share:.0%} of its pixels "
                          f"(share {obj.colour_share:.2f}); recolour is the only operation allowed")
        rng = scenario_rng(cfg.seed, rec.location, cand.scenario, "edit")
        op = str(rng.choice(operations))
        new_object = new_colour = None
        if op == "replace":
            swaps = load_swaps().get(obj.category, ())
            if swaps and rng.random() < cfg.cross_category_share:
                new_object = str(rng.choice(swaps))  # across categories: "the person" → "a dog"
            else:
                new_object = str(rng.choice(knowledge.replacements(obj.category)))
            if rng.random() < cfg.replace_colour_share:
                new_colour = str(rng.choice(colours.recolour_targets))
            content = {"new": with_article(f"{new_colour} {new_object}" if new_colour else new_object)}
            described = content["new"]
            prompt = templates.prompts["replace"].format(new=content["new"])
            target_caption = prompt
        elif op == "recolour":
            options = [c for c in colours.recolour_targets if c != obj.colour]
            new_colour = str(rng.choice(options))
            content = {"colour": new_colour}
            described = with_article(f"{new_colour} {obj.category}")
            prompt = templates.prompts["recolour"].format(colour=new_colour, category=obj.category)
            target_caption = prompt
        else:
            content = {}
            described = "background"
            prompt = templates.prompts["remove"]
            target_caption = templates.prompts["removed_caption"]
        referents = referent_phrases(cand, knowledge, templates)
        combos = [(t, r) for t in templates.operations[op] for r in referents]
        if cand.scenario == "reasoning":  # Reason-Edit's question form: "What could I read ...? Remove it."
            combos += [(t, q) for t in templates.question_operations.get(op, ())
                       for q in (knowledge.questions or {}).get(obj.category, ())]
        order = rng.permutation(len(combos))
        instructions: list[str] = []
        for i in order:
            template, referent = combos[i]
            text = _capitalise(template.format(referent=referent, question=referent, **content))
            if text not in instructions:
                instructions.append(text)
            if len(instructions) == cfg.n_instructions:
                break
        key = make_key("synthetic", rec.split, rec.image_id, obj.ann_id, cand.scenario)
        return EditJob(
            key=key, split=rec.split, image_id=rec.image_id, file_name=rec.file_name, image_path=str(rec.path),
            annotations=str(rec.annotations), width=rec.width, height=rec.height, scenario=cand.scenario,
            selector=cand.selector,
            target={"ann_id": obj.ann_id, "category": obj.category, "bbox": list(obj.bbox), "area": obj.area,
                    "centroid": [round(v, 2) for v in obj.centroid], "colour": obj.colour, "in_mirror": obj.in_mirror,
                    "n_same_category": cand.n_same_category},
            operation=op, referent=referents[0], instructions=instructions, target_description=described,
            prompt=prompt, source_caption=templates.prompts["source_caption"].format(category=obj.category),
            target_caption=target_caption, seed=derived_seed(cfg.seed, key) % (2**31),
            new_object=new_object, new_colour=new_colour,
        )
