"""Quality filters after the editor, one stage each; each drop is a `Reject` with its reason and every
score lands in the pair's json.

- edit strength: mean CIE76 ΔE inside the mask ≥ min_edit_strength (edit_too_weak)
- background: outside the edit mask the target equals the source (background_changed)
- CLIP directional similarity ≥ clip_direction_min when a CLIP model is given (clip_direction_low)

(The mask-area rule is `pipeline.synthetic.mask_area`: it runs before the editor.)
"""

from __future__ import annotations

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.clip_direction import ClipDirection
from pipeline.synthetic.colour_naming import delta_e
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.pair import EditPair
from pipeline.synthetic.stages import FilterStage


class EditStrengthFilter(FilterStage):
    name = "edit_strength"

    def __init__(self, cfg: SyntheticConfig):
        self.min_strength = cfg.min_edit_strength

    def check(self, pair: EditPair) -> Reject | None:
        strength = float(delta_e(pair.source[pair.mask], pair.target[pair.mask]).mean())
        pair.scores["edit_strength"] = round(strength, 3)
        if strength < self.min_strength:
            return Reject(pair.job.location, "edit_too_weak", f"mean ΔE inside the mask {strength:.2f} < {self.min_strength}")
        return None


class BackgroundFilter(FilterStage):
    name = "background"

    def __init__(self, cfg: SyntheticConfig):
        self.tolerance = cfg.background_tolerance

    def check(self, pair: EditPair) -> Reject | None:
        outside = ~pair.edit_mask
        diff = int(np.abs(pair.source[outside].astype(np.int16) - pair.target[outside].astype(np.int16)).max(initial=0))
        pair.scores["background_max_diff"] = diff
        if diff > self.tolerance:
            return Reject(pair.job.location, "background_changed",
                          f"pixels outside the edit mask differ by up to {diff} > {self.tolerance}")
        return None


class ClipDirectionFilter(FilterStage):
    """Skipped (keeps every pair) when no CLIP model is configured."""

    name = "clip_direction"

    def __init__(self, cfg: SyntheticConfig, clip: ClipDirection | None):
        self.minimum, self.clip = cfg.clip_direction_min, clip

    def check(self, pair: EditPair) -> Reject | None:
        if self.clip is None:
            return None
        score = self.clip.score(pair.source, pair.target, pair.job.source_caption, pair.job.target_caption)
        pair.scores["clip_direction"] = round(score, 4)
        pair.models["clip"] = self.clip.model_id
        if score < self.minimum:
            return Reject(pair.job.location, "clip_direction_low", f"CLIP directional similarity {score:.3f} < {self.minimum}")
        return None


def quality_filters(cfg: SyntheticConfig, clip: ClipDirection | None) -> list[FilterStage]:
    return [EditStrengthFilter(cfg), BackgroundFilter(cfg), ClipDirectionFilter(cfg, clip)]
