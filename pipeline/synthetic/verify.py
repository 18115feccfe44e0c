"""Edit verification: does each candidate do what its instruction says? Keeps the best, labels the rest.

Per operation (AnyEdit and UltraEdit verify each edit type; REFERENCE: AnyEdit re-detects removals):

- remove (CPU rule, no weights): the filled region must look like its surroundings, not like the object.
  For every filled pixel, the CIE76 ΔE to the nearest background pixel of the ring around the edit mask
  (other objects excluded) must stay small (90th percentile ≤ remove_ring_max_de), and at most
  remove_max_object_like of the filled pixels may be closer to the object's own colours than to that
  background. With a detector: the old category is no longer detected in the region.
- recolour: the object's dominant colour (voting in CIELAB against data_specs/colours.yaml) is the named
  colour with at least colour_min_share of the pixels, and its luminance pattern is kept (Pearson r of
  L* between source and target inside the object ≥ recolour_min_l_corr).
- replace: with a detector, the new object is detected in the region and the old one is not; with CLIP,
  the crop around the region matches the target description (CLIP score ≥ clip_crop_min). Without either
  a replacement cannot be checked on CPU and is kept marked ``verified: "unchecked"``.

Best-of-k: candidates that pass are ranked (removal: lowest ring ΔE; otherwise the highest detector or
CLIP score, else the first); the best becomes the pair's target. Every failed candidate (and, when none
passes, all of them) is kept as a labelled negative with its reason (written to their own shards).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.colour_naming import ColourTable, rgb_to_lab
from pipeline.synthetic.config import SyntheticConfig
from pipeline.synthetic.editors import Candidate
from pipeline.synthetic.masks import dilate
from pipeline.synthetic.pair import EditPair
from pipeline.synthetic.stages import MapStage

log = logging.getLogger(__name__)
_SAMPLE = 2048  # pixels sampled per region for the nearest-colour tests (enough for a stable 90th percentile)


@dataclass
class Verdict:
    reason: str | None  # None: passed
    detail: str
    scores: dict[str, Any]
    rank: float  # lower is better among passing candidates


def _sample(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return values if len(values) <= n else values[rng.choice(len(values), n, replace=False)]


def _smooth(rgb: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    if sigma <= 0:
        return rgb
    return cv2.GaussianBlur(np.ascontiguousarray(rgb), (0, 0), sigma)


def ring_statistics(source: np.ndarray, target: np.ndarray, obj: np.ndarray, edit_mask: np.ndarray,
                    others: np.ndarray | None, ring_px: int, seed: int = 0,
                    smooth_sigma: float = 1.5) -> dict[str, float] | None:
    """How background-like a fill is. source/target (H, W, 3) uint8; masks (H, W) bool.

    ring_de_p90: 90th percentile over filled pixels of ΔE to the spatially nearest ring pixel (the ring:
    background within ``ring_px`` of the edit mask); object_like: share of filled pixels nearer in colour
    to the object's pixels than to their nearest ring pixel. None when there is no ring. Both images are
    smoothed first (Gaussian, ``smooth_sigma`` px): grain and JPEG noise are not what makes a fill wrong,
    blobs, smears and broken edges are.
    """
    from scipy.ndimage import distance_transform_edt

    source, target = _smooth(source, smooth_sigma), _smooth(target, smooth_sigma)

    ring = dilate(edit_mask, ring_px) & ~edit_mask
    if others is not None:
        ring &= ~others
    if not ring.any():
        return None
    _, (iy, ix) = distance_transform_edt(~ring, return_indices=True)
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(edit_mask)
    pick = _sample(np.arange(len(ys)), _SAMPLE, rng)
    ys, xs = ys[pick], xs[pick]
    fill = rgb_to_lab(target[ys, xs])  # (N, 3)
    near = rgb_to_lab(source[iy[ys, xs], ix[ys, xs]])  # each filled pixel's nearest background colour
    de_ring = np.sqrt(((fill - near) ** 2).sum(-1))
    from scipy.spatial import cKDTree

    obj_lab = _sample(rgb_to_lab(source[obj]), 512, rng)  # (M, 3)
    de_obj, _ = cKDTree(obj_lab).query(fill)  # ΔE (CIE76 = Euclidean in CIELAB) to the nearest object colour
    return {"ring_de_p90": round(float(np.percentile(de_ring, 90)), 3),
            "ring_de_mean": round(float(de_ring.mean()), 3),
            "object_like": round(float((de_obj < de_ring).mean()), 4)}


class EditVerifier:
    """Judges one candidate; detector (`detector.OpenVocabDetector`) and CLIP (`clip_direction.ClipDirection`) optional."""

    def __init__(self, cfg: SyntheticConfig, colours: ColourTable, detector=None, clip=None):
        self.cfg, self.colours, self.detector, self.clip = cfg, colours, detector, clip

    def verify(self, pair: EditPair, cand: Candidate) -> Verdict:
        return self.verify_all(pair, [cand])[0]

    def verify_all(self, pair: EditPair, cands: list[Candidate]) -> list[Verdict]:
        """Verdicts for a pair's candidates; the CLIP crop scores of all of them in one batch."""
        op = pair.job.operation
        check = {"remove": self._remove, "recolour": self._recolour, "replace": self._replace}[op]
        verdicts = [check(pair, c) for c in cands]
        scored = [i for i, v in enumerate(verdicts) if v.reason is None] if self.clip is not None and op != "remove" else []
        if scored:
            scores = self.clip.crop_scores([cands[i].target for i in scored], [cands[i].edit_mask for i in scored],
                                           [pair.job.target_description] * len(scored))
            for i, score in zip(scored, scores):
                v = verdicts[i]
                v.scores["clip_crop"] = round(score, 3)
                v.rank = min(v.rank, -score)
                if score < self.cfg.clip_crop_min:
                    verdicts[i] = Verdict("clip_crop_low", f"CLIP score of the edited crop {score:.2f} < "
                                          f"{self.cfg.clip_crop_min}", v.scores, v.rank)
        return verdicts

    def _detected(self, cand: Candidate, queries: list[str], mask: np.ndarray) -> dict[str, float]:
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        return self.detector.region_scores(cand.target, box, queries)

    def _remove(self, pair: EditPair, cand: Candidate) -> Verdict:
        cfg = self.cfg
        stats = ring_statistics(pair.source, cand.target, pair.mask, cand.edit_mask, pair.others_mask,
                                max(8, cfg.remove_dilate_px), seed=pair.job.seed)
        if stats is None:
            return Verdict("no_background_ring", "no background pixels around the removed region to compare with",
                           {}, np.inf)
        scores: dict[str, Any] = dict(stats)
        if stats["ring_de_p90"] > cfg.remove_ring_max_de:
            return Verdict("fill_unlike_surroundings", f"filled pixels differ from the nearest background by ΔE "
                           f"{stats['ring_de_p90']:.2f} (90th percentile) > {cfg.remove_ring_max_de}", scores, np.inf)
        if stats["object_like"] > cfg.remove_max_object_like:
            return Verdict("fill_like_object", f"{stats['object_like']:.1%} of the filled pixels look like the object "
                           f"(> {cfg.remove_max_object_like:.0%})", scores, np.inf)
        if self.detector is not None:
            category = pair.job.target["category"]
            found = self._detected(cand, [category], pair.mask)[category]
            scores["detector_old"] = round(found, 4)
            if found >= cfg.detector_threshold:
                return Verdict("still_detected", f"{category} still detected in the region (score {found:.3f} ≥ "
                               f"{cfg.detector_threshold})", scores, np.inf)
        return Verdict(None, "", scores, stats["ring_de_p90"])

    def _recolour(self, pair: EditPair, cand: Candidate) -> Verdict:
        cfg, job = self.cfg, pair.job
        name, share = self.colours.name_pixels(cand.target[pair.mask])
        l_src = rgb_to_lab(pair.source[pair.mask])[:, 0]
        l_tgt = rgb_to_lab(cand.target[pair.mask])[:, 0]
        corr = float(np.corrcoef(l_src, l_tgt)[0, 1]) if l_src.std() > 1e-6 and l_tgt.std() > 1e-6 else 1.0
        scores = {"colour_named": name, "colour_share": round(share, 4), "luminance_corr": round(corr, 4)}
        if name != job.new_colour or share < cfg.colour_min_share:
            return Verdict("recolour_wrong_colour", f"the object now reads as {name} ({share:.0%} of its pixels), "
                           f"not {job.new_colour} (≥ {cfg.colour_min_share:.0%})", scores, np.inf)
        if corr < cfg.recolour_min_l_corr:
            return Verdict("recolour_lost_shading", f"luminance correlation {corr:.2f} < {cfg.recolour_min_l_corr}",
                           scores, np.inf)
        return Verdict(None, "", scores, -share)

    def _replace(self, pair: EditPair, cand: Candidate) -> Verdict:
        cfg, job = self.cfg, pair.job
        if self.detector is None:
            return Verdict(None, "", {"verified": "unchecked" if self.clip is None else "clip"}, 0.0)
        old, new = job.target["category"], job.new_object or ""
        found = self._detected(cand, [new, old], cand.edit_mask)
        scores = {"detector_new": round(found[new], 4), "detector_old": round(found[old], 4)}
        if found[new] < cfg.detector_threshold:
            return Verdict("replacement_not_detected", f"{new} not detected in the region (score {found[new]:.3f} < "
                           f"{cfg.detector_threshold})", scores, np.inf)
        if found[old] >= cfg.detector_threshold and found[old] >= found[new]:
            return Verdict("still_detected", f"{old} still detected in the region (score {found[old]:.3f})", scores, np.inf)
        return Verdict(None, "", scores, -found[new])


class VerifyEdits(MapStage):
    """EditPair with candidates → the pair with the best verified candidate as its target, or a Reject.

    ``negatives`` collects (pair, candidate, reason, detail) for every failed candidate, in order.
    """

    name = "verify"

    def __init__(self, verifier: EditVerifier | None):
        self.verifier = verifier
        self.negatives: list[tuple[EditPair, Candidate, str, str]] = []

    def map(self, pair: EditPair) -> EditPair | Reject:
        if self.verifier is None:  # verification off: the first candidate, as before
            return pair
        passed: list[tuple[float, int, Candidate]] = []
        failed: list[tuple[Candidate, Verdict]] = []
        for i, (cand, verdict) in enumerate(zip(pair.candidates, self.verifier.verify_all(pair, pair.candidates))):
            cand.scores = verdict.scores
            if verdict.reason is None:
                passed.append((verdict.rank, i, cand))
            else:
                failed.append((cand, verdict))
        for cand, verdict in failed:
            self.negatives.append((pair, cand, verdict.reason, verdict.detail))
        pair.scores["candidates"] = len(pair.candidates)
        if not passed:
            cand, verdict = failed[0]
            return Reject(pair.job.location, verdict.reason,
                          f"{verdict.detail} (and {len(failed) - 1} more candidates failed)" if len(failed) > 1
                          else verdict.detail)
        _, _, best = min(passed, key=lambda t: (t[0], t[1]))
        pair.target, pair.edit_mask = best.target, best.edit_mask
        pair.scores.update(best.scores)
        pair.scores["candidate"] = best.method + (f"-seed{best.seed}" if best.seed is not None else "")
        return pair
