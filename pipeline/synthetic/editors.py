"""Editors: make the target image of each pair.

`LabEditor` (CPU, no weights): recolour by moving the object's CIELAB mean to the new colour (its
shading kept), removal by biharmonic inpainting (scikit-image); replacement needs a generator and is
dropped with a reason. `InpaintEditor`: a diffusers inpainting pipeline from a local directory,
batched, one seeded generator per pair. Either way the source's pixels are pasted back outside the
edit mask, so the background is preserved exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.colour_naming import ColourTable, lab_to_rgb, rgb_to_lab
from pipeline.synthetic.pair import EditPair
from pipeline.synthetic.stages import BatchMapStage

log = logging.getLogger(__name__)


def paste_back(source: np.ndarray, edited: np.ndarray, edit_mask: np.ndarray) -> np.ndarray:
    """Edited pixels inside ``edit_mask`` (H, W), source pixels everywhere else: (H, W, 3) uint8."""
    return np.where(edit_mask[..., None], edited, source).astype(np.uint8)


RIM_DELTA_E = 30.0  # edge pixels within this ΔE of the object's mean colour are recoloured too


def recolour_lab(source: np.ndarray, mask: np.ndarray, edit_mask: np.ndarray, target_lab: np.ndarray) -> np.ndarray:
    """Shift the object's CIELAB mean onto ``target_lab`` (3,), keeping each pixel's offset (its shading).

    source (H, W, 3) uint8; mask, edit_mask (H, W) bool. Annotation and SAM masks miss a pixel or two of
    the object's rim; rim pixels inside the dilated ``edit_mask`` that still look like the object are
    recoloured as well, so no halo of the old colour is left.
    """
    lab = rgb_to_lab(source)
    mean = lab[mask].mean(0)
    rim = edit_mask & ~mask & (np.sqrt(((lab - mean) ** 2).sum(-1)) < RIM_DELTA_E)
    region = mask | rim
    out = source.copy()
    out[region] = lab_to_rgb((lab[region] - mean + target_lab).reshape(-1, 1, 3)).reshape(-1, 3)
    return out


def remove_biharmonic(source: np.ndarray, edit_mask: np.ndarray) -> np.ndarray:
    """Fill the masked region from its surroundings (scikit-image's biharmonic inpainting)."""
    from skimage.restoration import inpaint_biharmonic

    # The biharmonic stencil reaches 2 pixels: solving on the mask's box plus a margin gives the same
    # fill ~1.5x faster than on the whole image.
    ys, xs = np.nonzero(edit_mask)
    pad = 4
    y0, y1 = max(int(ys.min()) - pad, 0), int(ys.max()) + pad + 1
    x0, x1 = max(int(xs.min()) - pad, 0), int(xs.max()) + pad + 1
    crop = source[y0:y1, x0:x1].astype(np.float64) / 255.0
    filled = inpaint_biharmonic(crop, edit_mask[y0:y1, x0:x1], channel_axis=-1)
    out = source.copy()
    out[y0:y1, x0:x1] = np.clip(np.round(filled * 255.0), 0, 255).astype(np.uint8)
    return out


class LabEditor:
    name = "lab-biharmonic"

    def __init__(self, colours: ColourTable):
        self.colours = colours

    def edit_one(self, pair: EditPair) -> np.ndarray | Reject:
        job = pair.job
        if job.operation == "recolour":
            return recolour_lab(pair.source, pair.mask, pair.edit_mask, self.colours.lab_of(job.new_colour))
        if job.operation == "remove":
            if pair.edit_mask.all():
                return Reject(job.location, "mask_covers_image", "the dilated mask leaves no background to inpaint from")
            return remove_biharmonic(pair.source, pair.edit_mask)
        return Reject(job.location, "replace_needs_generator",
                      "replacing an object needs an inpainting model: pass inpaint_dir (or leave replace out of operations)")

    def edit(self, pairs: list[EditPair]) -> list[np.ndarray | Reject]:
        return [self.edit_one(p) for p in pairs]


class InpaintEditor:
    """diffusers inpainting (`AutoPipelineForInpainting`, e.g. SD-1.5 inpainting) loaded from a local directory."""

    def __init__(self, model_dir: str | Path, colours: ColourTable, device: str = "cpu", resolution: int = 512,
                 steps: int = 50, guidance_scale: float = 7.5, recolour_with: str = "lab"):
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
        self.lab = LabEditor(colours)
        self.resolution, self.steps, self.guidance_scale = resolution, steps, guidance_scale
        self.recolour_with = recolour_with

    def _generate(self, pairs: list[EditPair]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        # Every pair is resized to one square size so a batch is one tensor; the generated pixels are
        # resized back and only those inside the edit mask are kept, so the aspect change never shows
        # outside the mask.
        res = self.resolution
        images = [Image.fromarray(p.source).resize((res, res), Image.BICUBIC) for p in pairs]
        masks = [Image.fromarray(p.edit_mask.astype(np.uint8) * 255).resize((res, res), Image.NEAREST) for p in pairs]
        # CPU generators: the same seed gives the same noise on any device.
        generators = [torch.Generator("cpu").manual_seed(p.job.seed) for p in pairs]
        out = self.pipe(prompt=[p.job.prompt for p in pairs], image=images, mask_image=masks, height=res, width=res,
                        num_inference_steps=self.steps, guidance_scale=self.guidance_scale, generator=generators,
                        output_type="np").images  # (B, res, res, 3) float in [0, 1]
        results = []
        for pair, img in zip(pairs, out):
            gen = Image.fromarray(np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8))
            gen = gen.resize((pair.source.shape[1], pair.source.shape[0]), Image.BICUBIC)
            results.append(np.asarray(gen))
        return results

    def edit(self, pairs: list[EditPair]) -> list[np.ndarray | Reject]:
        results: list[np.ndarray | Reject | None] = [None] * len(pairs)
        generate = []
        for i, pair in enumerate(pairs):
            if pair.job.operation == "recolour" and self.recolour_with == "lab":
                results[i] = self.lab.edit_one(pair)
            else:
                generate.append(i)
        if generate:
            for i, img in zip(generate, self._generate([pairs[i] for i in generate])):
                results[i] = img
        return results  # type: ignore[return-value]


class ApplyEdits(BatchMapStage):
    """EditPair → EditPair with ``target`` set (edited pixels inside the edit mask only), in batches."""

    name = "editor"

    def __init__(self, editor, batch_size: int):
        self.editor, self.batch_size = editor, batch_size

    def map_batch(self, pairs: list[EditPair]) -> list[EditPair | Reject]:
        out: list[EditPair | Reject] = []
        for pair, result in zip(pairs, self.editor.edit(pairs)):
            if isinstance(result, Reject):
                out.append(result)
                continue
            pair.target = paste_back(pair.source, result, pair.edit_mask)
            pair.models["editor"] = self.editor.name
            if getattr(self.editor, "model_id", None):
                pair.models["inpaint"] = self.editor.model_id
            out.append(pair)
        return out
