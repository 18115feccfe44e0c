"""LPIPS (learned perceptual image patch similarity) with every weight read from a local directory.

torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` builds its backbone with torchvision's pretrained
weights, which means a download. Its network class ``_NoTrainLpips`` can instead be built with a randomly
initialised backbone (``pnet_rand=True``) and a local path for the linear heads (``model_path``); we then load
the backbone's ImageNet weights from a local file into it. So torchmetrics still runs the metric — we only
supply the weights, no fork and no download.

Directory layout (``lpips_dir``)::

    alexnet.pth  or  alexnet-owt-7be5be79.pth          torchvision AlexNet state dict ("features.N.*" keys,
                                                         or the features module's own "N.*" keys)
    squeezenet1_1.pth  or  squeezenet1_1-b8a52dc0.pth   torchvision SqueezeNet 1.1 state dict
    alex.pth / squeeze.pth                              LPIPS v0.1 linear heads ("linK.model.1.weight");
                                                         optional: torchmetrics ships the same files

The torchvision file names are those torch hub caches, so ``~/.cache/torch/hub/checkpoints`` can be copied in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

LpipsNet = Literal["alex", "squeeze"]

BACKBONE_FILES: dict[str, tuple[str, ...]] = {
    "alex": ("alexnet.pth", "alexnet-owt-7be5be79.pth"),
    "squeeze": ("squeezenet1_1.pth", "squeezenet1_1-b8a52dc0.pth"),
}
HEAD_FILES: dict[str, str] = {"alex": "alex.pth", "squeeze": "squeeze.pth"}


class LpipsWeightsMissing(FileNotFoundError):
    """A required LPIPS weight file is not in the local directory; the message names it."""


def _bundled_heads(net: LpipsNet) -> Path:
    from torchmetrics.functional.image import lpips as tm_lpips

    return Path(tm_lpips.__file__).parent / "lpips_models" / HEAD_FILES[net]


def resolve_weight_files(lpips_dir: Path | str, net: LpipsNet) -> tuple[Path, Path]:
    """(backbone file, linear-heads file) for ``net`` in ``lpips_dir``; LpipsWeightsMissing names what is absent."""
    lpips_dir = Path(lpips_dir)
    if not lpips_dir.is_dir():
        raise LpipsWeightsMissing(f"{lpips_dir}: LPIPS weights directory not found")
    backbone = next((lpips_dir / n for n in BACKBONE_FILES[net] if (lpips_dir / n).is_file()), None)
    if backbone is None:
        raise LpipsWeightsMissing(
            f"{lpips_dir}: LPIPS-{net} needs the torchvision backbone weights as "
            f"{' or '.join(BACKBONE_FILES[net])} (a state dict, e.g. copied from ~/.cache/torch/hub/checkpoints)"
        )
    heads = lpips_dir / HEAD_FILES[net]
    if not heads.is_file():
        bundled = _bundled_heads(net)
        if not bundled.is_file():
            raise LpipsWeightsMissing(f"{lpips_dir}: LPIPS linear heads {HEAD_FILES[net]} missing (lpips v0.1 weights)")
        logger.info("%s: no %s; using the LPIPS linear heads torchmetrics ships (%s)", lpips_dir, heads.name, bundled)
        heads = bundled
    return backbone, heads


def _features_state_dict(state: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """The ``features`` module's state dict from a whole-model or features-only torchvision state dict."""
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if state and all(k.split(".")[0].isdigit() for k in state):
        return state
    raise ValueError(f"{where}: not a torchvision AlexNet/SqueezeNet state dict (no 'features.*' keys); got {list(state)[:4]}")


def load_lpips(lpips_dir: Path | str, net: LpipsNet = "alex", spatial: bool = False) -> torch.nn.Module:
    """torchmetrics' LPIPS network with backbone and linear heads from ``lpips_dir``; eval mode, no grads.

    Call as ``module(img0, img1)`` with (N, 3, H, W) tensors in [-1, 1]; returns (N, 1, 1, 1) distances, or with
    ``spatial=True`` the (N, 1, H, W) distance map (each layer's map bilinearly upsampled to the image, summed:
    the original LPIPS ``spatial`` option), whose average over chosen pixels is a masked LPIPS.
    """
    import torch
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    backbone_file, heads_file = resolve_weight_files(lpips_dir, net)
    # pnet_rand=True: torchvision builds the architecture with weights=None, so nothing is downloaded.
    module = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True, model_path=str(heads_file), spatial=spatial)
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    missing_heads = [f"lin{i}.model.1.weight" for i in range(len(module.lins)) if f"lin{i}.model.1.weight" not in heads]
    if missing_heads:
        raise ValueError(f"{heads_file}: not LPIPS-{net} linear heads; missing keys {missing_heads}")

    features = _features_state_dict(torch.load(backbone_file, map_location="cpu", weights_only=True), backbone_file)
    # The LPIPS wrapper regroups torchvision's `features` layers into slices but keeps each layer's original
    # index as its name, so a layer "i" in any slice takes the torchvision keys "i.*".
    slices = module.net.slices if hasattr(module.net, "slices") else [getattr(module.net, f"slice{k}") for k in range(1, 6)]
    loaded: set[str] = set()
    for seq in slices:
        for name, layer in seq.named_children():
            own = {k.removeprefix(f"{name}."): v for k, v in features.items() if k.split(".")[0] == name}
            expected = layer.state_dict().keys()
            if set(own) != set(expected):
                raise ValueError(f"{backbone_file}: layer features.{name} expects {sorted(expected)}, file has {sorted(own)}")
            if own:
                layer.load_state_dict(own)
                loaded.update(f"{name}.{k}" for k in own)
    if not loaded:
        raise ValueError(f"{backbone_file}: no backbone weights matched the {net} architecture")
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
