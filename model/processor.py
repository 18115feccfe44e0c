"""SmartEditProcessor: (PIL image, instruction[, answer | target]) → the tensors SmartEditModel.forward reads.

Prompt (LLaVA v1 conversation): ``<s>{system} USER: <image>×N\n{instruction} ASSISTANT:[ {answer}</s>]<img_0>…<img_31>``.
The [IMG] tokens close every sample so that every row has exactly r of them; their labels are set for edits (the LM
learns to emit them) and left at -100 for VQA rows, whose answer tokens carry the labels instead. The pieces are
tokenised separately so the label spans are exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from model.config import SmartEditConfig

IGNORE_INDEX = -100


def pil_to_signed_unit_range(image: Image.Image, size: int | tuple[int, int]):
    """PIL → (3, H, W) float tensor in [-1, 1]; size is S or (H, W) (bicubic resize when the size differs)."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    height, width = (size, size) if isinstance(size, int) else size
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), PILImage.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


def clip_input_size(image_processor) -> tuple[int, int]:
    """(H, W) the vision tower reads: the processor's crop size (224×224 for CLIP-L/14-224)."""
    crop = getattr(image_processor, "crop_size", None) or {}
    if getattr(image_processor, "do_center_crop", True) and "height" in crop:
        return int(crop["height"]), int(crop["width"])
    size = image_processor.size
    if "height" in size:
        return int(size["height"]), int(size["width"])
    return int(size["shortest_edge"]), int(size["shortest_edge"])


class SmartEditProcessor:
    """Tokenises prompts with the [IMG] tokens and prepares the three image views (edit src/tgt, CLIP input)."""

    def __init__(
        self,
        tokenizer,
        image_processor,
        config: SmartEditConfig,
        image_token_id: int,
        num_image_placeholders: int,
        text_tokenizer=None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.text_tokenizer = text_tokenizer
        self.config = config
        self.image_token_id = image_token_id
        self.num_image_placeholders = num_image_placeholders
        self.img_token_ids = tokenizer.convert_tokens_to_ids(config.img_tokens())
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in self.img_token_ids:
            raise ValueError("tokenizer lacks the [IMG] tokens; build it through build_smartedit (add_img_tokens)")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, instruction: str, with_image: bool = True) -> list[int]:
        """Token ids of the conversation prefix up to and including 'ASSISTANT:'."""
        pre, post = self.config.prompt_template.split("{image}", 1)
        ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids += self._ids(pre)
        if with_image:
            ids += [self.image_token_id] * self.num_image_placeholders
        else:  # text only (stage-1 captions): no line break after an image that is not there
            post = post.lstrip("\n")
        return ids + self._ids(post.format(instruction=instruction))

    def clip_pixels(self, image: Image.Image):
        """CLIP-normalised vision-tower input (3, S, S).

        Geometry: the whole image is resized (squashed) to S×S, the same transform the UNet's view gets
        (``pil_to_signed_unit_range`` to R×R), so every CLIP patch — hence every BIM feature in v′ — lies over the latent
        cells it is added to. The CLIP processor's own shortest-edge resize + centre crop would drop the sides of a
        non-square image (on a 4:1 image, the outer 37.5 % on each side) while the UNet still edits them. The
        official inference (``test/DS_SmartEdit_test.py``) squashes both views the same way (224 and 256 px)."""
        from PIL import Image as PILImage

        height, width = clip_input_size(self.image_processor)
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), PILImage.BICUBIC)
        return self.image_processor(images=image, do_resize=False, do_center_crop=False,
                                    return_tensors="pt")["pixel_values"][0]

    def encode(
        self,
        image: Image.Image | None,
        instruction: str,
        answer: str | None = None,
        target: Image.Image | None = None,
    ) -> dict[str, Any]:
        """One sample (unbatched). An edit has no answer (target optional at inference); a VQA sample has an answer
        and trains only the LM. Returns input_ids/labels (L,), clip_pixels (3, S, S), src_pixels/tgt_pixels
        (3, R, R) in [-1, 1] where available, is_edit (bool)."""
        import torch

        is_edit = answer is None
        prompt = self.prompt_ids(instruction, with_image=image is not None)
        ids, labels = list(prompt), [IGNORE_INDEX] * len(prompt)
        if answer is not None:
            answer_ids = self._ids(" " + answer.strip())
            if self.tokenizer.eos_token_id is not None:
                answer_ids.append(self.tokenizer.eos_token_id)
            ids += answer_ids
            labels += answer_ids
        ids += self.img_token_ids
        labels += self.img_token_ids if is_edit else [IGNORE_INDEX] * len(self.img_token_ids)
        sample: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "is_edit": is_edit,
        }
        if image is not None:
            sample["clip_pixels"] = self.clip_pixels(image)
            sample["src_pixels"] = pil_to_signed_unit_range(image, self.config.resolution)
        if target is not None:
            sample["tgt_pixels"] = pil_to_signed_unit_range(target, self.config.resolution)
        return sample

    def encode_caption(self, caption: str) -> dict[str, Any]:
        """Stage-1 sample: the caption in the same conversation template as a stage-2 edit, text only (no image
        placeholders): ``<s>{system} USER: {caption} ASSISTANT:<img_0>…``, CE on the [IMG] tokens, plus the CLIP
        tokens of the caption (clip_text_input_ids (77,)) for the alignment target. One prompt path for both
        stages (``encode``), so the [IMG] tokens are learned in the context they are used in."""
        if self.text_tokenizer is None:
            raise ValueError("stage-1 captions need the CLIP text tokenizer (config.clip_text_dir)")
        sample = self.encode(None, caption)
        sample["is_edit"] = False  # no diffusion target in stage 1
        sample["clip_text_input_ids"] = self.text_tokenizer(
            caption, padding="max_length", max_length=self.text_tokenizer.model_max_length, truncation=True,
            return_tensors="pt")["input_ids"][0]
        return sample

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-pad token fields; stack images (rows without an image view get zeros, they are masked out).
        Adds attention_mask and img_token_mask (B, L)."""
        import torch

        if not samples:
            raise ValueError("collate needs at least one sample")
        length = max(len(s["input_ids"]) for s in samples)
        b = len(samples)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = s["input_ids"], s["labels"], 1
        first, last = self.img_token_ids[0], self.img_token_ids[-1]
        batch: dict[str, torch.Tensor] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "img_token_mask": (input_ids >= first) & (input_ids <= last),
            "is_edit": torch.tensor([bool(s["is_edit"]) for s in samples]),
        }
        for key in ("clip_pixels", "src_pixels", "tgt_pixels", "clip_text_input_ids"):
            present = [s[key] for s in samples if key in s]
            if not present:
                continue
            if key == "clip_pixels" and len(present) != b:
                raise ValueError("mixing samples with and without images in one batch is not supported")
            template = torch.zeros_like(present[0])
            batch[key] = torch.stack([s.get(key, template) for s in samples])
        return batch

    def __call__(
        self,
        images: Image.Image | Sequence[Image.Image],
        instructions: str | Sequence[str],
        answers: Sequence[str | None] | None = None,
        targets: Sequence[Image.Image | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batch of edits (answers None) and/or VQA samples, collated."""
        if isinstance(instructions, str):
            instructions = [instructions]
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images for {len(instructions)} instructions")
        answers = list(answers) if answers is not None else [None] * len(images)
        targets = list(targets) if targets is not None else [None] * len(images)
        return self.collate([self.encode(im, ins, a, t)
                             for im, ins, a, t in zip(images, instructions, answers, targets)])
