"""MGIEProcessor: (image, instruction, expressive summary[, target]) → the tensors MGIEModel.forward reads.

Conversation (apple/ml-mgie ``mgie_train.py``, Vicuna v1.1 template)::

    <s>{system} USER: what will this image be like if '{instruction}'\n<image>×N ASSISTANT: {summary} [IMG0]…[IMG7]</s>

Labels cover the answer (summary, the 8 [IMG] tokens, ``</s>``); the prompt is masked. Without a summary (data
not yet through the expressive-instruction step) the answer is the [IMG] tokens alone. Batching, image views and
the [IMG] mask are SmartEdit's (``SmartEditProcessor``); only the prompt and the answer differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model.processor import IGNORE_INDEX, SmartEditProcessor, pil_to_signed_unit_range

if TYPE_CHECKING:
    from PIL import Image


class MGIEProcessor(SmartEditProcessor):
    """SmartEdit's processor with MGIE's user turn and answer."""

    def prompt_ids(self, instruction: str, with_image: bool = True) -> list[int]:
        """Token ids of the conversation up to and including 'ASSISTANT:'. The instruction precedes the image."""
        pre, post = self.config.prompt_template.split("{image}", 1)
        ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids += self._ids(pre.format(instruction=instruction.strip()))
        if with_image:
            ids += [self.image_token_id] * self.num_image_placeholders
        return ids + self._ids(post.format(instruction=instruction.strip()))

    def encode(
        self,
        image: Image.Image | None,
        instruction: str,
        answer: str | None = None,
        target: Image.Image | None = None,
    ) -> dict[str, Any]:
        """One edit sample (unbatched); ``answer`` is the expressive summary (None or "" → [IMG] tokens only).
        Returns input_ids/labels (L,), clip_pixels (3, S, S), src_pixels/tgt_pixels (3, R, R) in [-1, 1],
        is_edit (always True: every MGIE sample trains the diffusion loss)."""
        import torch

        prompt = self.prompt_ids(instruction, with_image=image is not None)
        answer_ids = self._ids(" " + answer.strip()) if answer and answer.strip() else []
        answer_ids += list(self.img_token_ids)
        if self.tokenizer.eos_token_id is not None:
            answer_ids.append(self.tokenizer.eos_token_id)
        sample: dict[str, Any] = {
            "input_ids": torch.tensor(prompt + answer_ids, dtype=torch.long),
            "labels": torch.tensor([IGNORE_INDEX] * len(prompt) + answer_ids, dtype=torch.long),
            "is_edit": True,
        }
        if image is not None:
            sample["clip_pixels"] = self.clip_pixels(image)
            sample["src_pixels"] = pil_to_signed_unit_range(image, self.config.resolution)
        if target is not None:
            sample["tgt_pixels"] = pil_to_signed_unit_range(target, self.config.resolution)
        return sample

    def generation_prompt(self, image: Image.Image, instruction: str) -> dict[str, Any]:
        """Inference input for one image: input_ids (1, L) up to 'ASSISTANT:' and clip_pixels (1, 3, S, S)."""
        import torch

        ids = torch.tensor([self.prompt_ids(instruction)], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "clip_pixels": self.clip_pixels(image)[None]}
