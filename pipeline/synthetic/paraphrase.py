"""Optional LLM paraphrases: a local causal LM (transformers text-generation pipeline) rewrites the
first template instruction. Its output is kept only when it still means the same edit; otherwise the
templates stand. `valid_paraphrase` rejects a rewrite that

- changes any spatial, size, ordinal or colour word's meaning ("left" → "right", "bigger" → "smaller";
  synonyms such as larger/bigger are the same meaning), or loses the operation (the new object, the new
  colour, a removal verb);
- adds a negation ("don't", "without", ...) or an object the instruction did not name;
- for a reasoning instruction, names the answer's category ("Remove the clock" for "Remove the object
  that can tell the time": the point of the instruction is that the model has to work it out).
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from pipeline.synthetic.colour_naming import load_colour_table
from pipeline.synthetic.instructions import EditJob, Templates
from pipeline.synthetic.knowledge import load_knowledge
from pipeline.synthetic.stages import MapStage

log = logging.getLogger(__name__)
_PRINTABLE = re.compile(r"^[A-Za-z0-9 ,.'!?()\-]+$")


# Words whose meaning a paraphrase must keep, each mapped to its meaning (synonyms share one).
SPATIAL = {"left": "left", "leftmost": "left", "right": "right", "rightmost": "right", "middle": "middle",
           "center": "middle", "centre": "middle", "central": "middle", "top": "top", "above": "top", "upper": "top",
           "bottom": "bottom", "below": "bottom", "lower": "bottom", "mirror": "mirror", "reflection": "mirror",
           "reflected": "mirror"}
SIZE = {"big": "big", "bigger": "big", "biggest": "big", "large": "big", "larger": "big", "largest": "big",
        "small": "small", "smaller": "small", "smallest": "small", "little": "small", "tiny": "small",
        "tiniest": "small"}
ORDINAL = {w: w for w in ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")}
NEGATIONS = {"not", "no", "don't", "dont", "never", "without", "except", "nothing", "neither", "nor"}
_WORD = re.compile(r"[a-z']+")


def _meanings(words: list[str], table: dict[str, str]) -> set[str]:
    return {table[w] for w in words if w in table}


@functools.cache
def _object_nouns() -> tuple[str, ...]:
    """Every object noun an instruction may name: COCO categories, kind nouns, replacement objects."""
    knowledge = load_knowledge()
    nouns = set(knowledge.categories) | {r for k in knowledge.kinds.values() for r in k.replacements}
    nouns |= {k.noun for k in knowledge.kinds.values() if k.noun != "object"}
    return tuple(sorted(nouns, key=len, reverse=True))


def _mentions(text: str, noun: str) -> bool:
    return re.search(rf"\b{re.escape(noun)}(s|es)?\b", text) is not None


def valid_paraphrase(text: str, job: EditJob, templates: Templates) -> str | None:
    """The cleaned paraphrase, or None when it is empty, garbled, a copy, or means another edit."""
    line = text.strip().splitlines()[0].strip().strip("\"'") if text.strip() else ""
    words = line.split()
    if not 3 <= len(words) <= 40 or not _PRINTABLE.match(line):
        return None
    low = line.lower()
    original = job.instructions[0].lower()
    if job.operation == "replace":
        needed = [job.new_object or ""] + ([job.new_colour] if job.new_colour else [])
        if not all(n.lower() in low for n in needed):
            return None
    elif job.operation == "recolour":
        if (job.new_colour or "").lower() not in low:
            return None
    elif not any(v in low for v in templates.remove_verbs):
        return None
    if low.rstrip(".") in {i.lower().rstrip(".") for i in job.instructions}:
        return None
    new_words, old_words = _WORD.findall(low), _WORD.findall(original)
    colours = {c: c for c in load_colour_table().names}
    for table in (SPATIAL, SIZE, ORDINAL, colours):
        if _meanings(new_words, table) != _meanings(old_words, table):
            return None
    if (set(new_words) & NEGATIONS) - set(old_words):
        return None
    for noun in _object_nouns():  # longest first, so "hot dog" is not read as "dog"
        if _mentions(low, noun) and not _mentions(original, noun):
            return None
        low, original = re.sub(rf"\b{re.escape(noun)}", " ", low), re.sub(rf"\b{re.escape(noun)}", " ", original)
    if job.scenario == "reasoning" and _mentions(line.lower(), str(job.target.get("category", "")).lower()):
        return None
    return line[:1].upper() + line[1:]


class LlmParaphraser:
    """Greedy decoding, so the output depends only on the model and the prompt (deterministic)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", max_new_tokens: int = 40):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"llm_dir {model_dir}: no config.json; expected a transformers save_pretrained directory")
        from transformers import pipeline

        self.model_id = str(model_dir)
        self.generator = pipeline("text-generation", model=str(model_dir), tokenizer=str(model_dir), device=device)
        self.max_new_tokens = max_new_tokens

    def generate(self, prompt: str) -> str:
        tok = self.generator.tokenizer
        out = self.generator(
            prompt, max_new_tokens=self.max_new_tokens, do_sample=False, return_full_text=False,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
        return str(out[0]["generated_text"]) if out else ""


class AddParaphrases(MapStage):
    """Append a valid LLM paraphrase of the first instruction to each job's instructions."""

    name = "paraphrase"

    def __init__(self, paraphraser: LlmParaphraser | None, templates: Templates):
        self.paraphraser, self.templates = paraphraser, templates

    def map(self, job: EditJob) -> EditJob:
        if self.paraphraser is None:
            return job
        raw = self.paraphraser.generate(self.templates.llm_prompt.format(instruction=job.instructions[0]))
        text = valid_paraphrase(raw, job, self.templates)
        if text is None:
            log.debug("%s: LLM paraphrase rejected: %r", job.key, raw[:80])
        else:
            job.instructions.append(text)
            job.paraphrased_by_llm.append(text)
        return job
