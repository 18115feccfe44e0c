"""Instruction-following scores: signals a do-nothing editor fails, unlike background fidelity, which rewards it.

Per (item, seed), all at the metric size (256 px):

* ``fg_change`` — mean absolute change of the output inside the binarised edit region, in [0, 1]. No model.
  A no-op scores exactly 0; the gate's edit floor uses it (``model.evaluation.gate``).
* ``clip_direction`` — CLIP directional similarity (InstructPix2Pix, UltraEdit) of the edit-region crop:
  cos(E_img(output crop) − E_img(input crop), E_txt(target text) − E_txt(source text)). Reason-Edit gives only a
  target description (the ``CLIP:`` text), so the source text is the item's ``source_text`` when the benchmark
  has one and the empty caption otherwise. A no-op has a zero image direction and scores 0. Shares
  ``pipeline.synthetic.clip_direction.ClipDirection`` with the synthetic builder's filter.
* ``vlm`` — a local VLM judge (VIEScore / GEdit-Bench style), ``model.evaluation.vlm_judge``.
* where the benchmark has a target image (evaluation shards with ``tgt.*``), MagicBrush's metrics: ``l1`` (mean
  absolute pixel difference to the target, [0, 1]), ``clip_i`` (cosine of CLIP image embeddings of output and
  target) and ``dino`` (cosine of DINOv2 embeddings, transformers ``Dinov2Model`` from a local directory;
  MagicBrush used DINO ViT-S/16, DINOv2 is its successor in transformers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from model.evaluation.metrics import ItemScores
    from model.evaluation.vlm_judge import VlmJudge

logger = logging.getLogger(__name__)

INSTRUCTION_METRICS = ("clip", "clip_direction", "vlm", "l1", "clip_i", "dino")
"""Scores of agreement with the instruction (or its ground-truth result); the gate needs at least one of these."""
CHANGE_METRIC = "fg_change"


def foreground_change(inp: torch.Tensor, out: torch.Tensor, region: np.ndarray) -> float | None:
    """Mean |output − input| over the edit region's pixels and channels; (3, H, W) in [0, 1], region (H, W) bool.
    None for an empty region."""
    import torch

    if not region.any():
        return None
    reg = torch.from_numpy(region).expand_as(inp)
    return float((out.double() - inp.double()).abs()[reg].mean())


def _embedding(features: Any) -> torch.Tensor:
    # transformers 5 returns an output object (projected embeddings in pooler_output); older versions a tensor
    return features if hasattr(features, "norm") else features.pooler_output


class DinoEmbedder:
    """DINOv2 (transformers ``Dinov2Model`` + its image processor) from a local ``save_pretrained`` directory."""

    def __init__(self, dino_dir: Path | str, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, Dinov2Model

        dino_dir = Path(dino_dir)
        if not (dino_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{dino_dir}: no config.json; expected a transformers DINOv2 directory (e.g. facebook/dinov2-small "
                "saved with save_pretrained: config.json, weights, preprocessor_config.json)"
            )
        self.model = Dinov2Model.from_pretrained(dino_dir).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(dino_dir)
        self.device = device

    def similarity(self, a: Image.Image, b: Image.Image) -> float:
        """Cosine of the two images' CLS embeddings (``pooler_output``: the layer-normed CLS token)."""
        import torch

        with torch.no_grad():
            pixels = self.processor(images=[a.convert("RGB"), b.convert("RGB")], return_tensors="pt")["pixel_values"]
            emb = self.model(pixel_values=pixels.to(self.device)).pooler_output.float()
        return float(torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0))


class InstructionFollowing:
    """Fills the instruction-following fields of ``ItemScores``; each model is optional (its column is then n/a)."""

    def __init__(self, clip_direction=None, dino: DinoEmbedder | None = None, vlm: VlmJudge | None = None) -> None:
        self.clip_direction = clip_direction
        self.dino = dino
        self.vlm = vlm

    @classmethod
    def build(cls, clip_dir: Path | str | None = None, dino_dir: Path | str | None = None,
              vlm_dir: Path | str | None = None, device: str = "cpu") -> InstructionFollowing:
        direction = dino = vlm = None
        if clip_dir is not None:
            from pipeline.synthetic.clip_direction import ClipDirection

            direction = ClipDirection(clip_dir, device=device)
        if dino_dir is not None:
            dino = DinoEmbedder(dino_dir, device=device)
        if vlm_dir is not None:
            from model.evaluation.vlm_judge import VlmJudge

            vlm = VlmJudge(vlm_dir, device=device)
        return cls(direction, dino, vlm)

    def _clip_image_similarity(self, a: Image.Image, b: Image.Image) -> float:
        import torch

        cd = self.clip_direction
        with torch.no_grad():
            pixels = cd.processor(images=[a.convert("RGB"), b.convert("RGB")], return_tensors="pt")["pixel_values"]
            emb = _embedding(cd.model.get_image_features(pixel_values=pixels.to(cd.device))).float()
        return float(torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0))

    def score(self, scores: ItemScores, *, inp, out, region, inp_crop, out_crop, inp_pil, out_pil, clip_text,
              source_text, instruction, target) -> None:
        import numpy as np
        from PIL import Image

        scores.fg_change = foreground_change(inp, out, region)
        if scores.fg_change is None:
            scores.notes.append("empty edit region: no foreground change")
        if self.clip_direction is not None and clip_text:
            scores.clip_direction = self.clip_direction.score(
                np.asarray(inp_crop.convert("RGB")), np.asarray(out_crop.convert("RGB")), source_text or "", clip_text
            )
        if self.vlm is not None and instruction:
            verdict = self.vlm.judge(inp_pil, out_pil, instruction)
            scores.vlm = verdict.overall
            if verdict.note:
                scores.notes.append(verdict.note)
        if target is not None:
            tgt = target.convert("RGB").resize(out_pil.size, resample=Image.Resampling.BICUBIC)
            a = np.asarray(out_pil.convert("RGB"), dtype=np.float64) / 255.0
            b = np.asarray(tgt, dtype=np.float64) / 255.0
            scores.l1 = float(np.abs(a - b).mean())
            if self.clip_direction is not None:
                scores.clip_i = self._clip_image_similarity(out_pil, tgt)
            if self.dino is not None:
                scores.dino = self.dino.similarity(out_pil, tgt)

    def models(self) -> dict[str, str | None]:
        """Which metric models produced the columns (directories), for the comparability record."""
        return {
            "clip_direction": getattr(self.clip_direction, "model_id", None),
            "dino": None if self.dino is None else str(getattr(self.dino.model, "name_or_path", "")),
            "vlm": None if self.vlm is None else str(self.vlm.model_dir),
        }
