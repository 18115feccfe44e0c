"""Editors: make the candidate target images of each pair (best-of-k; `verify.py` picks one).

`LabEditor` (CPU, no weights): recolour by moving the object's CIELAB mean to the new colour (its
shading kept); removal by OpenCV inpainting (Navier–Stokes or Telea's fast marching; Bertalmio et al.
2001, Telea 2004), candidates varying the method and the mask dilation; replacement needs a generator
and is dropped with a reason. `InpaintEditor`: a diffusers inpainting pipeline from a local directory,
run on a square crop around the mask (not the whole image squashed), batched, one seeded generator
per candidate. Every candidate is blended into the source with a feathered edge inside its edit mask;
outside the mask the source's pixels are kept exactly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.colour_naming import ColourTable, lab_to_rgb, rgb_to_lab
from pipeline.synthetic.masks import dilate, edit_region, mask_window
from pipeline.synthetic.pair import EditPair
from pipeline.synthetic.stages import BatchMapStage

log = logging.getLogger(__name__)


def paste_back(source: np.ndarray, edited: np.ndarray, edit_mask: np.ndarray, feather_px: int = 0) -> np.ndarray:
    """Edited pixels inside ``edit_mask`` (H, W), source pixels everywhere else: (H, W, 3) uint8.

    feather_px > 0: the edited pixels fade in over that many pixels inside the mask (no hard seam);
    outside the mask the source is still kept bit-exactly.
    """
    if feather_px <= 0:
        return np.where(edit_mask[..., None], edited, source).astype(np.uint8)
    from scipy.ndimage import distance_transform_edt

    out = source.copy()
    window = mask_window(edit_mask, 1)
    inside = edit_mask[window]
    alpha = np.clip(distance_transform_edt(inside) / (feather_px + 1), 0.0, 1.0)[..., None]
    blended = alpha * edited[window].astype(np.float64) + (1 - alpha) * source[window].astype(np.float64)
    out[window] = np.where(inside[..., None], np.round(blended), source[window]).astype(np.uint8)
    return out


@dataclass
class Candidate:
    """One candidate edit of a pair: its target image, the mask it may differ in, how it was made."""

    target: np.ndarray  # (H, W, 3) uint8, equal to the source outside edit_mask
    edit_mask: np.ndarray  # (H, W) bool
    method: str
    seed: int | None = None
    scores: dict = field(default_factory=dict)


RIM_DELTA_E = 30.0  # edge pixels within this ΔE of the object's mean colour are recoloured too


def recolour_lab(source: np.ndarray, mask: np.ndarray, edit_mask: np.ndarray, target_lab: np.ndarray) -> np.ndarray:
    """Shift the object's CIELAB mean onto ``target_lab`` (3,), keeping each pixel's offset (its shading).

    source (H, W, 3) uint8; mask, edit_mask (H, W) bool. Annotation and SAM masks miss a pixel or two of
    the object's rim; rim pixels inside the dilated ``edit_mask`` that still look like the object are
    recoloured as well, so no halo of the old colour is left.
    """
    window = mask_window(edit_mask | mask, 1)
    lab = rgb_to_lab(source[window])
    obj, allowed = mask[window], edit_mask[window]
    mean = lab[obj].mean(0)
    rim = allowed & ~obj & (np.sqrt(((lab - mean) ** 2).sum(-1)) < RIM_DELTA_E)
    region = obj | rim
    out = source.copy()
    patch = out[window]  # a view: writing it writes out
    patch[region] = lab_to_rgb((lab[region] - mean + target_lab).reshape(-1, 1, 3)).reshape(-1, 3)
    return out


def _mask_box(mask: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (max(int(ys.min()) - pad, 0), int(ys.max()) + pad + 1, max(int(xs.min()) - pad, 0), int(xs.max()) + pad + 1)


def remove_biharmonic(source: np.ndarray, edit_mask: np.ndarray) -> np.ndarray:
    """Fill the masked region from its surroundings (scikit-image's biharmonic inpainting)."""
    from skimage.restoration import inpaint_biharmonic

    # The biharmonic stencil reaches 2 pixels: solving on the mask's box plus a margin gives the same
    # fill ~1.5x faster than on the whole image.
    y0, y1, x0, x1 = _mask_box(edit_mask, 4)
    crop = source[y0:y1, x0:x1].astype(np.float64) / 255.0
    filled = inpaint_biharmonic(crop, edit_mask[y0:y1, x0:x1], channel_axis=-1)
    out = source.copy()
    out[y0:y1, x0:x1] = np.clip(np.round(filled * 255.0), 0, 255).astype(np.uint8)
    return out


def remove_opencv(source: np.ndarray, edit_mask: np.ndarray, method: str = "ns", others: np.ndarray | None = None,
                  radius: int = 3) -> np.ndarray:
    """Fill ``edit_mask`` with OpenCV's inpainting (``ns``: Navier–Stokes, ``telea``: fast marching).

    Other objects next to the mask (``others``, (H, W) bool) would bleed into the fill, so their pixels
    near the mask are inpainted too and then discarded: the fill comes from background only.
    """
    import cv2

    flag = {"ns": cv2.INPAINT_NS, "telea": cv2.INPAINT_TELEA}[method]
    hole = edit_mask
    if others is not None:
        hole = edit_mask | (others & dilate(edit_mask, 4 * radius))
    y0, y1, x0, x1 = _mask_box(hole, 4 * radius)
    crop = np.ascontiguousarray(source[y0:y1, x0:x1])
    filled = cv2.inpaint(crop, hole[y0:y1, x0:x1].astype(np.uint8) * 255, radius, flag)
    out = source.copy()
    out[y0:y1, x0:x1] = filled
    return out


def removal_candidates(method: str, dilate_px: int, k: int) -> list[tuple[str, int]]:
    """(method, dilation) per candidate: the configured method with the full, 2/3 and 1/3 margin, then the
    other OpenCV method likewise (a tight margin saves a neighbouring edge a wide one would smear)."""
    if method == "biharmonic":
        return [("biharmonic", dilate_px)]
    other = "telea" if method == "ns" else "ns"
    margins = list(dict.fromkeys([dilate_px, max(dilate_px * 2 // 3, 1), max(dilate_px // 3, 1)]))
    return [(m, px) for m in (method, other) for px in margins][:max(k, 1)]


class LabEditor:
    """CPU editor. ``edit(pairs)`` → per pair a list of candidates, or a Reject."""

    def __init__(self, colours: ColourTable, removal: str = "ns", remove_dilate_px: int = 15, best_of: int = 1,
                 feather_px: int = 0):
        self.colours, self.removal, self.remove_dilate_px = colours, removal, remove_dilate_px
        self.best_of, self.feather_px = best_of, feather_px
        self.name = "lab-biharmonic" if removal == "biharmonic" else f"lab-opencv-{removal}"

    def edit_one(self, pair: EditPair) -> list[Candidate] | Reject:
        job = pair.job
        if job.operation == "recolour":
            edited = recolour_lab(pair.source, pair.mask, pair.edit_mask, self.colours.lab_of(job.new_colour))
            return [Candidate(paste_back(pair.source, edited, pair.edit_mask), pair.edit_mask, "lab-recolour")]
        if job.operation == "remove":
            if pair.edit_mask.all():
                return Reject(job.location, "mask_covers_image", "the dilated mask leaves no background to inpaint from")
            out = []
            for method, px in removal_candidates(self.removal, self.remove_dilate_px, self.best_of):
                mask = pair.edit_mask if px == self.remove_dilate_px else edit_region(pair.mask, pair.others_mask, px)
                if method == "biharmonic":
                    filled = remove_biharmonic(pair.source, mask)
                else:
                    filled = remove_opencv(pair.source, mask, method, pair.others_mask)
                out.append(Candidate(paste_back(pair.source, filled, mask, self.feather_px), mask, f"{method}-{px}px"))
            return out
        return Reject(job.location, "replace_needs_generator",
                      "replacing an object needs an inpainting model: pass inpaint_dir (or leave replace out of operations)")

    def edit(self, pairs: list[EditPair]) -> list[list[Candidate] | Reject]:
        return [self.edit_one(p) for p in pairs]


def crop_box(mask: np.ndarray, context: float = 0.5, minimum: int = 64) -> tuple[int, int, int, int]:
    """A square (y0, y1, x0, x1) around ``mask`` with ``context`` × its size of surroundings, inside the image.

    Inpainting sees the object at a useful resolution with enough context (diffusers' `padding_mask_crop`
    does the same for one image; this works per pair, so a batch mixes image sizes).
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = int(round(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) * (1 + 2 * context)))
    side = min(max(side, minimum), h, w) if min(h, w) >= minimum else min(h, w)
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return y0, y0 + side, x0, x0 + side


class InpaintEditor:
    """Any diffusers inpainting pipeline (`AutoPipelineForInpainting`: SD-1.5/2 inpainting, SDXL inpainting,
    FLUX-Fill) loaded from a local directory; ``best_of`` seeded candidates per pair, batched."""

    def __init__(self, model_dir: str | Path, colours: ColourTable, device: str = "cpu", resolution: int = 512,
                 steps: int = 50, guidance_scale: float = 7.5, recolour_with: str = "lab", best_of: int = 1,
                 feather_px: int = 0, batch_size: int = 4, lab: LabEditor | None = None):
        model_dir = Path(model_dir)
        index = model_dir / "model_index.json"
        if not index.exists():
            raise FileNotFoundError(f"inpaint_dir {model_dir}: no model_index.json; expected a diffusers save_pretrained directory")
        import torch
        from diffusers import AutoPipelineForInpainting

        kwargs = {}
        if json.loads(index.read_text()).get("safety_checker", [None])[0] is not None:
            kwargs.update(safety_checker=None, requires_safety_checker=False)  # research data, not a public demo
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.pipe = AutoPipelineForInpainting.from_pretrained(str(model_dir), dtype=dtype, **kwargs).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.model_id = str(model_dir)
        self.name = f"inpaint:{model_dir.name}"
        self.lab = lab or LabEditor(colours, feather_px=feather_px)
        self.resolution, self.steps, self.guidance_scale = resolution, steps, guidance_scale
        self.recolour_with, self.best_of, self.feather_px, self.batch_size = recolour_with, best_of, feather_px, batch_size

    def _generate(self, jobs: list[tuple[EditPair, int]]) -> list[Candidate]:
        """One candidate per (pair, seed): the crop around the edit mask inpainted at ``resolution``."""
        import torch
        from PIL import Image

        res = self.resolution
        boxes = [crop_box(p.edit_mask) for p, _ in jobs]
        images = [Image.fromarray(p.source[y0:y1, x0:x1]).resize((res, res), Image.BICUBIC)
                  for (p, _), (y0, y1, x0, x1) in zip(jobs, boxes)]
        masks = [Image.fromarray(p.edit_mask[y0:y1, x0:x1].astype(np.uint8) * 255).resize((res, res), Image.NEAREST)
                 for (p, _), (y0, y1, x0, x1) in zip(jobs, boxes)]
        # CPU generators: the same seed gives the same noise on any device.
        generators = [torch.Generator("cpu").manual_seed(seed) for _, seed in jobs]
        out = self.pipe(prompt=[p.job.prompt for p, _ in jobs], image=images, mask_image=masks, height=res, width=res,
                        num_inference_steps=self.steps, guidance_scale=self.guidance_scale, generator=generators,
                        output_type="np").images  # (B, res, res, 3) float in [0, 1]
        results = []
        for (pair, seed), (y0, y1, x0, x1), img in zip(jobs, boxes, out):
            gen = Image.fromarray(np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8))
            full = pair.source.copy()
            full[y0:y1, x0:x1] = np.asarray(gen.resize((x1 - x0, y1 - y0), Image.BICUBIC))
            target = paste_back(pair.source, full, pair.edit_mask, self.feather_px)
            results.append(Candidate(target, pair.edit_mask, "inpaint", seed))
        return results

    def edit(self, pairs: list[EditPair]) -> list[list[Candidate] | Reject]:
        results: list[list[Candidate] | Reject] = [[] for _ in pairs]
        jobs: list[tuple[int, int]] = []
        for i, pair in enumerate(pairs):
            if pair.job.operation == "recolour" and self.recolour_with == "lab":
                results[i] = self.lab.edit_one(pair)
            else:
                jobs += [(i, pair.job.seed + k) for k in range(self.best_of)]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            for (i, _), cand in zip(chunk, self._generate([(pairs[i], seed) for i, seed in chunk])):
                results[i].append(cand)  # type: ignore[union-attr]
        return results


class ApplyEdits(BatchMapStage):
    """EditPair → EditPair with its candidate targets (pixels changed inside their edit masks only), in batches."""

    name = "editor"

    def __init__(self, editor, batch_size: int):
        self.editor, self.batch_size = editor, batch_size

    def map_batch(self, pairs: list[EditPair]) -> list[EditPair | Reject]:
        out: list[EditPair | Reject] = []
        for pair, result in zip(pairs, self.editor.edit(pairs)):
            if isinstance(result, Reject):
                out.append(result)
                continue
            pair.candidates = result
            pair.target, pair.edit_mask = result[0].target, result[0].edit_mask  # until verification picks one
            pair.models["editor"] = self.editor.name
            if getattr(self.editor, "model_id", None):
                pair.models["inpaint"] = self.editor.model_id
            out.append(pair)
        return out
