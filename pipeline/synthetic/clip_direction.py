"""CLIP scorers for instruction following, shared by the synthetic builder and the evaluation (one copy).

- directional similarity (InstructPix2Pix, UltraEdit): does the image change point the way the caption
  change does? cos(E_img(target) − E_img(source), E_txt(target caption) − E_txt(source caption));
- crop score (Reason-Edit's foreground CLIP score): 100 · max(cos(E_img(crop), E_txt(text)), 0), the
  crop being the edited image cut to the bounding box of the mask.

Public, stable names: `ClipDirection` (`score`, `direction_scores`, `crop_scores`, `image_text_scores`)
and `mask_box_crop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def mask_box_crop(image: np.ndarray, mask: np.ndarray, official: bool = False) -> np.ndarray:
    """image (H, W, 3) cut to the bounding box of mask (H, W) bool; the whole image for an empty mask.

    official=True reproduces the Reason-Edit script's off-by-one (the last row and column are left out).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return image
    end = 0 if official else 1
    y1, x1 = max(int(ys.max()) + end, int(ys.min()) + 1), max(int(xs.max()) + end, int(xs.min()) + 1)
    return image[int(ys.min()):y1, int(xs.min()):x1]


class ClipDirection:
    """A transformers `CLIPModel` + processor from a local directory (save_pretrained layout)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"clip_dir {model_dir}: no config.json; expected a transformers CLIPModel directory")
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(str(model_dir)).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(model_dir))
        self.device = device
        self.model_id = str(model_dir)

    @staticmethod
    def _embedding(out):
        # transformers 5 returns an output object (projected embeddings in pooler_output); older, a tensor.
        return out if hasattr(out, "norm") else out.pooler_output

    def image_embeddings(self, images: Sequence[np.ndarray]):
        """(N, D) L2-normalised image embeddings of uint8 (H, W, 3) arrays, one batch."""
        import torch

        with torch.no_grad():
            pixels = self.processor(images=[np.array(i, copy=True) for i in images],
                                    return_tensors="pt")["pixel_values"].to(self.device)
            emb = self._embedding(self.model.get_image_features(pixel_values=pixels))
            return torch.nn.functional.normalize(emb.float(), dim=-1)

    def text_embeddings(self, texts: Sequence[str]):
        """(N, D) L2-normalised text embeddings, one batch."""
        import torch

        with torch.no_grad():
            tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
            emb = self._embedding(self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)))
            return torch.nn.functional.normalize(emb.float(), dim=-1)

    def direction_scores(self, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                         source_captions: Sequence[str], target_captions: Sequence[str]) -> list[float]:
        """Directional similarity per pair, in [-1, 1]; all pairs in one image batch and one text batch."""
        import torch

        n = len(sources)
        img = self.image_embeddings(list(sources) + list(targets))
        txt = self.text_embeddings(list(source_captions) + list(target_captions))
        d_img, d_txt = img[n:] - img[:n], txt[n:] - txt[:n]
        return [float(v) for v in torch.nn.functional.cosine_similarity(d_img, d_txt, dim=-1)]

    def score(self, source: np.ndarray, target: np.ndarray, source_caption: str, target_caption: str) -> float:
        """Directional similarity of one pair (see `direction_scores`)."""
        return self.direction_scores([source], [target], [source_caption], [target_caption])[0]

    def image_text_scores(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[float]:
        """CLIP score per (image, text): 100 · max(cos, 0)."""
        cos = (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1)
        return [100.0 * max(float(c), 0.0) for c in cos]

    def crop_scores(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], texts: Sequence[str],
                    official: bool = False) -> list[float]:
        """Reason-Edit's foreground CLIP score: each image cut to its mask's bounding box vs its text."""
        return self.image_text_scores([mask_box_crop(i, m, official) for i, m in zip(images, masks)], texts)
