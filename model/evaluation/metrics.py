"""Reason-Edit metrics under two protocols: ``official`` (the released script, quirks included) and ``corrected``.

Both protocols first bring the input and the edited output to 256×256 with bicubic resampling and the mask with
nearest-neighbour, as the released script does. Then, per item:

``official`` — reproduces SmartEdit's ``test/metrics_evaluation.py``:
  * the JPEG mask is not binarised: ``m = pixel / 255`` (float), and both images are multiplied by ``1 − m``;
  * PSNR (data range 1), SSIM (Gaussian 11×11, σ 1.5) and LPIPS (SqueezeNet, inputs scaled to [−1, 1]) are
    computed over ALL pixels of those products, so the zeroed edit region counts as a perfectly preserved
    background and inflates PSNR/SSIM;
  * SSIM as torchmetrics ≤ 1.4.1 computed it (the version the released script ran with): the SSIM map with a
    5-px border (half the window) cropped away before averaging; torchmetrics ≥ 1.5 averages the whole map;
  * the CLIP crop box is min/max row and column of every non-zero mask pixel (JPEG noise included), passed
    to PIL as ``crop((left, top, right, bottom))``. PIL boxes are end-exclusive, so the last mask row and column
    are dropped: the crop is (right − left) × (bottom − top) instead of (right − left + 1) × (bottom − top + 1).
    We reproduce exactly that. Where it would give an empty box (a one-pixel-wide mask; the released script
    crashes there) we widen the box to one pixel and add a note;
  * the released script never scores 6-Reasoning (its folder filter and its per-category branch disagree);
    we score it anyway and the report flags those numbers as not reproducible with the released script.

``corrected`` (default):
  * mask binarised, edited region = pixel > 127, background = the rest;
  * background-only statistics. PSNR from the MSE over background pixels. Before SSIM and LPIPS the input's
    edit region is composited into the output (out' = region ? input : output), so a window that straddles the
    mask edge sees no foreground change; SSIM = the SSIM map of (input, out') averaged over background pixels
    (a bit-identical background scores exactly 1); LPIPS (AlexNet) = LPIPS' spatial map (per-layer distance
    maps upsampled to the image, ``spatial=True``) of (input, out') averaged over background pixels, so the
    same background damage scores the same whatever the mask's size;
  * CLIP crop = exact bounding box of the binarised region, last row and column included.

Both: CLIP = 100 · max(cos, 0) between the cropped output and the CLIP text (torchmetrics CLIPScore); an empty
mask crops nothing (whole image, noted). A PSNR of +inf (identical backgrounds) is capped at
``MetricsConfig.psnr_cap_db`` and noted, so means stay finite and a perfect background is not dropped; each item
also keeps its background MSE (``mse``) so the report can give the PSNR of the pooled error beside the capped mean.
Instruction-following scores (``fg_change``, ``clip_direction``, ``vlm``, and ``l1``/``clip_i``/``dino`` where a
target image exists) come from ``model.evaluation.instruction_following``.
A mask covering the whole image has no background: the corrected PSNR/SSIM/LPIPS are None (noted).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from model.evaluation.report import ItemScores  # the per-item scores are the report's record schema

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from model.evaluation.clip_score import ForegroundClipScorer
    from model.evaluation.instruction_following import InstructionFollowing

logger = logging.getLogger(__name__)

ScoringProtocol = Literal["official", "corrected"]
PROTOCOLS: tuple[str, ...] = ("official", "corrected")
LPIPS_NET: dict[str, str] = {"official": "squeeze", "corrected": "alex"}


@dataclass(frozen=True)
class MetricsConfig:
    """How items are scored."""

    protocol: ScoringProtocol = "corrected"
    """``official`` reproduces the released script; ``corrected`` fixes its quirks (module docstring)."""
    size: int = 256
    """Side the input, output and mask are resized to before scoring (paper: 256)."""
    mask_threshold: int = 127
    """corrected: a mask pixel belongs to the edit region when its value is above this."""
    psnr_cap_db: float = 100.0
    """PSNR of identical backgrounds (+inf) is reported as this value."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"MetricsConfig.protocol={self.protocol!r}; expected one of {PROTOCOLS}")
        if self.size < 16:
            raise ValueError(f"MetricsConfig.size={self.size}; expected at least 16 (SSIM uses an 11×11 window)")
        if not 0 <= self.mask_threshold < 255:
            raise ValueError(f"MetricsConfig.mask_threshold={self.mask_threshold}; expected 0..254")


def prepare(image: Image.Image, output: Image.Image, mask: Image.Image, size: int):
    """Resize as the released script does: images bicubic, mask nearest.

    Returns (input (3, S, S) float32 in [0, 1], output (3, S, S) float32 in [0, 1], output PIL S×S,
    mask (S, S) uint8 as stored, JPEG noise kept).
    """
    import numpy as np
    import torch
    from PIL import Image

    inp = image.convert("RGB").resize((size, size), resample=Image.Resampling.BICUBIC)
    out = output.convert("RGB").resize((size, size), resample=Image.Resampling.BICUBIC)
    m = np.asarray(mask.convert("L").resize((size, size), resample=Image.Resampling.NEAREST), dtype=np.uint8)

    def to_tensor(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

    return to_tensor(inp), to_tensor(out), out, m


def official_crop_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The released script's PIL box (left, top, right, bottom) over non-zero pixels: end-exclusive, so the
    last mask row and column fall outside. None for an all-zero mask."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def exact_crop_box(region: np.ndarray) -> tuple[int, int, int, int] | None:
    """PIL box (left, top, right + 1, bottom + 1) covering every pixel of a boolean region; None if empty."""
    import numpy as np

    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _finite_psnr(value: float, cap: float, notes: list[str]) -> float:
    if math.isinf(value) or value > cap:
        notes.append(f"psnr capped at {cap:g} dB (identical background)")
        return cap
    return value


class ReasonEditMetrics:
    """Scores (input, output, mask, CLIP text[, target]) under one protocol; the model-based columns only when
    their weights are given.

    ``lpips`` is a module from ``model.evaluation.lpips.load_lpips`` matching the protocol's backbone
    (``LPIPS_NET``; spatial for the corrected protocol); ``clip`` a ``ForegroundClipScorer``; ``following`` an
    ``InstructionFollowing`` (CLIP direction, CLIP-I, DINO, VLM judge).
    """

    def __init__(
        self,
        config: MetricsConfig | None = None,
        lpips: torch.nn.Module | None = None,
        clip: ForegroundClipScorer | None = None,
        following: InstructionFollowing | None = None,
    ) -> None:
        from model.evaluation.instruction_following import InstructionFollowing

        self.config = config or MetricsConfig()
        self.lpips = lpips
        self.clip = clip
        self.following = following or InstructionFollowing()

    @classmethod
    def build(
        cls,
        config: MetricsConfig | None = None,
        clip_dir: Path | str | None = None,
        lpips_dir: Path | str | None = None,
        device: str = "cpu",
        dino_dir: Path | str | None = None,
        vlm_dir: Path | str | None = None,
    ) -> ReasonEditMetrics:
        """Load LPIPS (the protocol's backbone), CLIP, DINOv2 and a VLM judge from local directories; any may be
        None (its columns are n/a)."""
        from model.evaluation.instruction_following import InstructionFollowing

        config = config or MetricsConfig()
        lpips = clip = None
        if lpips_dir is not None:
            from model.evaluation.lpips import load_lpips

            net = LPIPS_NET[config.protocol]
            lpips = load_lpips(lpips_dir, net, spatial=config.protocol == "corrected").to(device)  # type: ignore[arg-type]
        else:
            logger.warning("no LPIPS weights directory given: the LPIPS column is n/a")
        if clip_dir is not None:
            from model.evaluation.clip_score import ForegroundClipScorer

            clip = ForegroundClipScorer(clip_dir, device=device)
        else:
            logger.warning("no CLIP directory given: the CLIP, CLIP-direction and CLIP-I columns are n/a")
        following = InstructionFollowing.build(clip_dir=clip_dir, dino_dir=dino_dir, vlm_dir=vlm_dir, device=device)
        return cls(config, lpips=lpips, clip=clip, following=following)

    def score(
        self,
        image: Image.Image,
        output: Image.Image,
        mask: Image.Image,
        clip_text: str | None,
        target: Image.Image | None = None,
        instruction: str | None = None,
        source_text: str | None = None,
    ) -> ItemScores:
        """All metrics of one edit. ``target``: the ground-truth edited image, when the benchmark has one;
        ``instruction``: for the VLM judge; ``source_text``: caption of the input for CLIP direction."""
        inp, out, out_pil, raw_mask = prepare(image, output, mask, self.config.size)
        region = raw_mask > self.config.mask_threshold  # the edit region, binarised (both protocols, for following)
        if self.config.protocol == "official":
            scores = self._official(inp, out, raw_mask)
            box = official_crop_box(raw_mask)
            if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
                box = (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))
                scores.notes.append("official crop box was empty (one-pixel-wide mask); widened to one pixel")
        else:
            scores = self._corrected(inp, out, region)
            box = exact_crop_box(region)
        crop = out_pil if box is None else out_pil.crop(box)
        if self.clip is not None and clip_text:
            if box is None:
                scores.notes.append("empty mask: CLIP scored on the whole output")
            scores.clip = self.clip.score(crop, clip_text)
        elif self.clip is not None:
            scores.notes.append("no CLIP text for this item")
        inp_pil = image.convert("RGB").resize(out_pil.size, resample=_bicubic())
        self.following.score(
            scores, inp=inp, out=out, region=region, inp_crop=inp_pil if box is None else inp_pil.crop(box), out_crop=crop,
            inp_pil=inp_pil, out_pil=out_pil, clip_text=clip_text, source_text=source_text, instruction=instruction,
            target=target,
        )
        return scores

    def _lpips(self, a: torch.Tensor, b: torch.Tensor, background: torch.Tensor | None = None) -> float | None:
        """LPIPS of (3, H, W) images in [0, 1]; the network takes [-1, 1] like the released script feeds it.
        With ``background`` ((H, W) bool) the spatial map is averaged over those pixels only."""
        import torch

        if self.lpips is None:
            return None
        device = next(self.lpips.parameters()).device
        with torch.no_grad():
            value = self.lpips(a[None].to(device) * 2 - 1, b[None].to(device) * 2 - 1)
        if background is None:
            return float(value.mean())  # (1, 1, 1, 1), or the spatial map's mean
        if value.shape[-2:] != background.shape:
            raise ValueError("corrected LPIPS needs the spatial LPIPS module (load_lpips(..., spatial=True))")
        return float(value[0, 0][background.to(value.device)].mean())

    def _official(self, inp: torch.Tensor, out: torch.Tensor, raw_mask: np.ndarray) -> ItemScores:
        import torch
        from torchmetrics.functional.image import structural_similarity_index_measure

        keep = 1.0 - torch.from_numpy(raw_mask.astype("float32") / 255.0)  # (H, W), not binarised: JPEG noise stays
        a, b = inp * keep, out * keep
        notes: list[str] = []
        mse = float(torch.mean((a.double() - b.double()) ** 2))
        # torchmetrics <= 1.4.1 (the released script's) cropped half the 11-px window from every side of the SSIM
        # map before averaging; today's torchmetrics averages the whole map, so crop its full map ourselves.
        _, ssim_map = structural_similarity_index_measure(
            a[None].double(), b[None].double(), data_range=1.0, return_full_image=True
        )
        ssim = float(ssim_map[..., 5:-5, 5:-5].mean())
        return ItemScores(psnr=_psnr(mse, self.config.psnr_cap_db, notes), ssim=ssim, lpips=self._lpips(a, b),
                          mse=mse, notes=notes)

    def _corrected(self, inp: torch.Tensor, out: torch.Tensor, region: np.ndarray) -> ItemScores:
        import torch
        from torchmetrics.functional.image import structural_similarity_index_measure

        background = torch.from_numpy(~region)  # (H, W) bool
        if not bool(background.any()):
            return ItemScores(notes=["mask covers the whole image: no background to score"])
        notes: list[str] = []
        bg3 = background.expand_as(inp)
        mse = float(torch.mean((inp.double()[bg3] - out.double()[bg3]) ** 2))
        composite = torch.where(bg3, out, inp)  # the input's edit region pasted into the output
        if torch.equal(composite, inp):
            ssim = 1.0  # SSIM(x, x) = 1 exactly; float variance clamping inside torchmetrics can land a hair below
        else:
            _, ssim_map = structural_similarity_index_measure(
                inp[None].double(), composite[None].double(), data_range=1.0, return_full_image=True
            )
            ssim = float(ssim_map[0][bg3].mean())
        return ItemScores(
            psnr=_psnr(mse, self.config.psnr_cap_db, notes),
            ssim=ssim,
            lpips=self._lpips(inp, composite, background),
            mse=mse,
            notes=notes,
        )


def _psnr(mse: float, cap: float, notes: list[str]) -> float:
    """PSNR (data range 1) from a mean squared error; +inf (and anything above ``cap``) is capped and noted."""
    if math.isnan(mse):
        return math.nan
    return _finite_psnr(math.inf if mse == 0 else 10 * math.log10(1.0 / mse), cap, notes)


def psnr_of_mse(mse: float) -> float:
    """PSNR (data range 1) of a mean squared error, +inf for 0."""
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _bicubic():
    from PIL import Image

    return Image.Resampling.BICUBIC
