"""CLIP directional similarity (InstructPix2Pix, UltraEdit): does the image change point the way the
caption change does? cos(E_img(target) − E_img(source), E_txt(target caption) − E_txt(source caption)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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

    def score(self, source: np.ndarray, target: np.ndarray, source_caption: str, target_caption: str) -> float:
        """source, target: (H, W, 3) uint8. Returns the cosine in [-1, 1]."""
        import torch

        with torch.no_grad():
            pixels = self.processor(images=[source.copy(), target.copy()], return_tensors="pt")["pixel_values"].to(self.device)
            img = self._embedding(self.model.get_image_features(pixel_values=pixels))  # (2, D)
            tokens = self.processor(text=[source_caption, target_caption], return_tensors="pt", padding=True)
            txt = self._embedding(self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)))
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
            d_img, d_txt = img[1] - img[0], txt[1] - txt[0]
            return float(torch.nn.functional.cosine_similarity(d_img, d_txt, dim=0))
