"""Quality filters; each drop is a `Reject` with its reason and every score lands in the pair's json.

- mask area within [mask_min_area, mask_max_area] of the image (mask_too_small / mask_too_large)
- edit strength: mean CIE76 ΔE inside the mask ≥ min_edit_strength (edit_too_weak)
- background: outside the edit mask the target equals the source (background_changed)
- CLIP directional similarity ≥ clip_direction_min when a CLIP model is given (clip_direction_low)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.clip_direction import ClipDirection
from pipeline.synthetic.colour_naming import delta_e
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.pair import EditPair


def filter_mask_area(pairs: Iterable[EditPair | Reject], cfg: SyntheticConfig) -> Iterator[EditPair | Reject]:
    for pair in pairs:
        if isinstance(pair, Reject):
            yield pair
            continue
        frac = float(pair.mask.mean())
        pair.scores["mask_area"] = round(frac, 5)
        if frac < cfg.mask_min_area or frac > cfg.mask_max_area:
            reason = "mask_too_small" if frac < cfg.mask_min_area else "mask_too_large"
            yield Reject(pair.job.location, reason,
                         f"{pair.mask_source} mask covers {frac:.4f} of the image, outside [{cfg.mask_min_area}, {cfg.mask_max_area}]")
            continue
        yield pair


def filter_edits(pairs: Iterable[EditPair | Reject], cfg: SyntheticConfig,
                 clip: ClipDirection | None) -> Iterator[EditPair | Reject]:
    for pair in pairs:
        if isinstance(pair, Reject):
            yield pair
            continue
        src, tgt = pair.source, pair.target
        strength = float(delta_e(src[pair.mask], tgt[pair.mask]).mean())
        outside = ~pair.edit_mask
        bg_diff = int(np.abs(src[outside].astype(np.int16) - tgt[outside].astype(np.int16)).max(initial=0))
        pair.scores.update(edit_strength=round(strength, 3), background_max_diff=bg_diff)
        if strength < cfg.min_edit_strength:
            yield Reject(pair.job.location, "edit_too_weak",
                         f"mean ΔE inside the mask {strength:.2f} < {cfg.min_edit_strength}")
            continue
        if bg_diff > cfg.background_tolerance:
            yield Reject(pair.job.location, "background_changed",
                         f"pixels outside the edit mask differ by up to {bg_diff} > {cfg.background_tolerance}")
            continue
        if clip is not None:
            score = clip.score(src, tgt, pair.job.source_caption, pair.job.target_caption)
            pair.scores["clip_direction"] = round(score, 4)
            pair.models["clip"] = clip.model_id
            if score < cfg.clip_direction_min:
                yield Reject(pair.job.location, "clip_direction_low",
                             f"CLIP directional similarity {score:.3f} < {cfg.clip_direction_min}")
                continue
        yield pair
