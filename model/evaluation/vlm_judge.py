"""A local VLM judge of edits, in the style of VIEScore (Ku et al., 2024) and GEdit-Bench.

Two questions per edit, asked of a LLaVA loaded from a local directory (transformers
``LlavaForConditionalGeneration`` + ``AutoProcessor``; the LLaVA the SmartEdit model loads will do):

* semantic consistency (SC): given the input and the edited image and the instruction, 0–10 for how well the edit
  follows the instruction and 0–10 for how little it over-edits;
* perceptual quality (PQ): given the edited image, 0–10 for naturalness and 0–10 for the absence of artifacts.

VIEScore's overall score is sqrt(min(SC) · min(PQ)); we report it divided by 10, in [0, 1]. Replies are parsed
robustly (``parse_scores``): a JSON object with a ``score`` list, else "n/10" pairs, else the numbers right after
a "score" word; an unparseable reply gives None and a note, never a crash or a made-up number.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

SC_PROMPT = (
    "You are a professional judge of image edits. The first image is the input, the second the edited result. "
    "Instruction: \"{instruction}\". Give two scores from 0 to 10: the first for how well the edit follows the "
    "instruction, the second for how little the image was changed beyond what the instruction asks. Reply with JSON "
    "only: {{\"score\": [s1, s2], \"reasoning\": \"...\"}}"
)
PQ_PROMPT = (
    "You are a professional judge of image quality. Give two scores from 0 to 10 for this image: the first for how "
    "natural it looks, the second for how free it is of artifacts (distortion, blur, watermarks). Reply with JSON "
    "only: {\"score\": [s1, s2], \"reasoning\": \"...\"}"
)

_NUMBER = r"(?<![\d.])(10(?:\.0+)?|\d(?:\.\d+)?)(?!\d|\.\d)"


def parse_scores(reply: str, expected: int = 2) -> list[float] | None:
    """The ``expected`` scores in 0–10 from a judge's reply, or None when they cannot be found.

    Accepts a JSON object (possibly inside prose or a code fence) with ``score``/``scores`` as a list or a number,
    "8/10 and 6/10", or "score: 7, 8"; values outside 0–10 and bare numbers in prose are not scores.
    """
    for match in re.finditer(r"\{.*?\}", reply, flags=re.S):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        value = data.get("score", data.get("scores")) if isinstance(data, dict) else None
        values = value if isinstance(value, list) else [value] if value is not None else []
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            continue
        if len(numbers) >= expected and all(0 <= v <= 10 for v in numbers[:expected]):
            return numbers[:expected]
    out_of_ten = [float(m) for m in re.findall(_NUMBER + r"\s*/\s*10\b", reply)]
    if len(out_of_ten) >= expected:
        return out_of_ten[:expected]
    # "score: 7, 8" / "scores [7, 8]": numbers right after a score word, separated by commas, "and" or spaces only
    after_word = re.search(r"scores?\s*[:=]?\s*\[?\s*(" + _NUMBER + r"(?:\s*(?:,|and)?\s*" + _NUMBER + r")*)", reply,
                           flags=re.I)
    if after_word:
        numbers = [float(m) for m in re.findall(_NUMBER, after_word.group(1))]
        if len(numbers) >= expected:
            return numbers[:expected]
    return None  # bare numbers in prose ("the 3 cups") are not scores


@dataclass
class Verdict:
    sc: list[float] | None
    pq: list[float] | None
    overall: float | None
    """sqrt(min(SC) · min(PQ)) / 10 in [0, 1]; None when a reply could not be parsed."""
    note: str | None = None


def overall_score(sc: list[float] | None, pq: list[float] | None) -> float | None:
    if not sc or not pq:
        return None
    return math.sqrt(min(sc) * min(pq)) / 10.0


class VlmJudge:
    """Asks a local LLaVA the SC and PQ questions; greedy decoding, so the verdict is deterministic."""

    def __init__(self, vlm_dir: Path | str, device: str = "cpu", max_new_tokens: int = 64) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.model_dir = Path(vlm_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{self.model_dir}: no config.json; expected a transformers LLaVA directory "
                "(LlavaForConditionalGeneration + its processor, saved with save_pretrained)"
            )
        self.model = LlavaForConditionalGeneration.from_pretrained(self.model_dir).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        self.device = device
        self.max_new_tokens = max_new_tokens

    def _prompt(self, text: str, n_images: int) -> str:
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        image_token = getattr(self.processor, "image_token", "<image>")
        return "USER: " + "\n".join([image_token] * n_images) + f"\n{text} ASSISTANT:"

    def ask(self, images: list[Image.Image], text: str) -> str:
        import torch

        inputs = self.processor(images=[im.convert("RGB") for im in images], text=self._prompt(text, len(images)),
                                return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def judge(self, image: Image.Image, output: Image.Image, instruction: str) -> Verdict:
        sc_reply = self.ask([image, output], SC_PROMPT.format(instruction=instruction))
        pq_reply = self.ask([output], PQ_PROMPT)
        sc, pq = parse_scores(sc_reply), parse_scores(pq_reply)
        note = None
        if sc is None or pq is None:
            bad = sc_reply if sc is None else pq_reply
            note = f"VLM judge reply not parseable as scores: {bad[:80]!r}"
        return Verdict(sc, pq, overall_score(sc, pq), note)
