"""Mask area: an edit region must cover [mask_min_area, mask_max_area] of the image (UltraEdit keeps
1–90 %). Checked twice with one rule: on the annotation at planning time (before a scenario's quota is
spent on it) and on the edit mask (SAM's or the annotation's) in the shard stages."""

from __future__ import annotations

from typing import Any

from pipeline.records import Reject
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.stages import FilterStage


def mask_area_reject(frac: float, cfg: SyntheticConfig, location: str, what: str) -> Reject | None:
    """A mask_too_small / mask_too_large Reject when ``frac`` (mask pixels / image pixels) is out of range."""
    if cfg.mask_min_area <= frac <= cfg.mask_max_area:
        return None
    reason = "mask_too_small" if frac < cfg.mask_min_area else "mask_too_large"
    return Reject(location, reason, f"{what} covers {frac:.4f} of the image, outside [{cfg.mask_min_area}, {cfg.mask_max_area}]")


class MaskAreaFilter(FilterStage):
    """EditPair: its object mask's share of the image (recorded as the ``mask_area`` score)."""

    name = "mask_area"

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg

    def check(self, pair: Any) -> Reject | None:
        frac = float(pair.mask.mean())
        pair.scores["mask_area"] = round(frac, 5)
        return mask_area_reject(frac, self.cfg, pair.job.location, f"{pair.mask_source} mask")
