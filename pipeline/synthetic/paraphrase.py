"""Optional LLM paraphrases: a local causal LM (transformers text-generation pipeline) rewrites the
first template instruction. Its output is kept only when it is a plausible instruction that still says
what the edit is (the new object, the new colour, or a removal verb); otherwise the templates stand.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pipeline.synthetic.instructions import EditJob, Templates
from pipeline.synthetic.stages import MapStage

log = logging.getLogger(__name__)
_PRINTABLE = re.compile(r"^[A-Za-z0-9 ,.'!?()\-]+$")


def valid_paraphrase(text: str, job: EditJob, templates: Templates) -> str | None:
    """The cleaned paraphrase, or None when it is empty, garbled, a copy, or lost the edit's content."""
    line = text.strip().splitlines()[0].strip().strip("\"'") if text.strip() else ""
    words = line.split()
    if not 3 <= len(words) <= 40 or not _PRINTABLE.match(line):
        return None
    low = line.lower()
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
