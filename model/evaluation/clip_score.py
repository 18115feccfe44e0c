"""Foreground CLIP score: torchmetrics' CLIPScore on a CLIP ViT-L/14 loaded from a local directory.

torchmetrics' ``CLIPScore`` takes either a hub name (a download) or a callable returning (model, processor);
we pass the callable. With transformers 5, ``CLIPModel.get_image_features``/``get_text_features`` return an
output object (projected embeddings in ``.pooler_output``) while torchmetrics expects a tensor, so the model is
wrapped in a small adapter that returns the projected embeddings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


def _as_tensor(features):
    import torch

    if isinstance(features, torch.Tensor):
        return features
    pooled = getattr(features, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"CLIP features: expected a tensor or an output with .pooler_output, got {type(features).__name__}")
    return pooled


def _projected_clip(model):
    """``model`` behind an nn.Module whose feature methods return (N, D) projected embeddings."""
    import torch

    class ProjectedCLIP(torch.nn.Module):
        def __init__(self, clip) -> None:
            super().__init__()
            self.clip = clip
            self.config = clip.config

        def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return _as_tensor(self.clip.get_image_features(pixel_values=pixel_values))

        def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            return _as_tensor(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    return ProjectedCLIP(model)


def load_clip(clip_dir: Path | str):
    """(model, processor) from a local CLIP directory (``CLIPModel`` + ``CLIPProcessor`` files), eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{clip_dir}: no config.json; expected a transformers CLIP directory (e.g. openai/clip-vit-large-patch14 "
            "saved with save_pretrained: config.json, model weights, preprocessor_config.json, tokenizer files)"
        )
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    return model, processor


class ForegroundClipScorer:
    """100 · max(cos, 0) between a (cropped) image and a text, through torchmetrics' CLIPScore.

    ``score(image, text)`` takes an RGB PIL image of any size (the processor resizes and centre-crops it).
    """

    def __init__(self, clip_dir: Path | str, device: str = "cpu") -> None:
        from torchmetrics.multimodal.clip_score import CLIPScore

        model, processor = load_clip(clip_dir)
        self.clip_dir = Path(clip_dir)
        self.metric = CLIPScore(model_name_or_path=lambda: (_projected_clip(model), processor)).to(device)
        self.device = device

    def score(self, image: Image.Image, text: str) -> float:
        import numpy as np
        import torch

        # uint8 (3, H, W): the processor rescales by 1/255 itself, as for the released script's input.
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        # One item per update/compute: CLIPScore clamps the *mean* at 0, so a batch would not give per-item scores.
        self.metric.reset()
        with torch.no_grad():
            self.metric.update(pixels.to(self.device), text)
            value = self.metric.compute()
        self.metric.reset()
        return float(value)
