"""Open-vocabulary detection for edit verification: is "a dog" (still) in the edited region?

transformers' OWLv2 / OWL-ViT (`AutoModelForZeroShotObjectDetection` + `AutoProcessor`) from a local
directory. Every text query is scored against every predicted box; a query's score in a region is the
best score of the boxes whose centre lies inside it (UltraEdit and AnyEdit re-detect the same way with
Grounding DINO; the OWL family is used here because its outputs are per query, not per text token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class OpenVocabDetector:
    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"detector_dir {model_dir}: no config.json; expected a transformers OWLv2 / OWL-ViT "
                                    "directory (save_pretrained of e.g. google/owlv2-base-patch16-ensemble)")
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(str(model_dir)).to(device).eval()
        if not hasattr(self.model.config, "vision_config") or "owl" not in self.model.config.model_type:
            raise ValueError(f"detector_dir {model_dir}: model_type {self.model.config.model_type!r}; expected owlv2 or "
                             "owlvit (per-query scores)")
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        self.device = device
        self.model_id = str(model_dir)

    def detect(self, images: Sequence[np.ndarray], queries: Sequence[Sequence[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: boxes (P, 4) as x0, y0, x1, y1 pixels and scores (P, Q) in [0, 1] for its queries; batched."""
        import torch

        with torch.no_grad():
            inputs = self.processor(text=[list(q) for q in queries], images=[np.array(i, copy=True) for i in images],
                                    return_tensors="pt", padding=True, truncation=True).to(self.device)
            out = self.model(**inputs)
        logits = torch.sigmoid(out.logits.float()).cpu().numpy()  # (B, P, Q)
        boxes = out.pred_boxes.float().cpu().numpy()  # (B, P, 4) cx, cy, w, h relative to the padded square
        results = []
        for image, b, s, q in zip(images, boxes, logits, queries):
            # OWLv2 pads to a square at the bottom/right before resizing, so relative coordinates refer to
            # the longer side (OWL-ViT resizes without padding: the sides stay separate).
            h, w = image.shape[:2]
            side_x, side_y = (max(h, w), max(h, w)) if self.model.config.model_type == "owlv2" else (w, h)
            cx, cy, bw, bh = b[:, 0] * side_x, b[:, 1] * side_y, b[:, 2] * side_x, b[:, 3] * side_y
            xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            results.append((xyxy, s[:, :len(q)]))
        return results

    def region_scores(self, image: np.ndarray, box: tuple[float, float, float, float],
                      queries: Sequence[str]) -> dict[str, float]:
        """query → best score of boxes centred inside ``box`` (x0, y0, x1, y1 pixels); 0 when none is."""
        (xyxy, scores), = self.detect([image], [list(queries)])
        cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
        inside = (cx >= box[0]) & (cx <= box[2]) & (cy >= box[1]) & (cy <= box[3])
        return {q: float(scores[inside, i].max(initial=0.0)) for i, q in enumerate(queries)}
