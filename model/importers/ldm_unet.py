"""``instructdiffusion-ldm``: an InstructDiffusion or InstructPix2Pix LDM checkpoint (``.ckpt`` / ``.safetensors``
with ``model.diffusion_model.*`` keys) → a diffusers ``UNet2DConditionModel`` folder with 8 input channels, usable
as ``unet_dir``. The conversion is diffusers' own single-file loader (``UNet2DConditionModel.from_single_file``),
given the UNet config (``--unet-config``: a diffusers UNet folder or config.json, e.g. SD-1.5's ``unet/``) so that
nothing is fetched; only the input width is changed to the checkpoint's 8 channels.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from model.importers.mapping import KeyMapping, MappingReport, load_weights, shapes_of

logger = logging.getLogger(__name__)

DESCRIPTION = "InstructDiffusion / InstructPix2Pix LDM .ckpt → diffusers 8-channel UNet (diffusers single-file)"
LDM_PREFIX = "model.diffusion_model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unet-config", required=True, help="diffusers UNet folder or its config.json (SD-1.5 "
                        "unet/); in_channels is taken from the checkpoint")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights (model_ema.*) when the checkpoint has "
                        "them, as diffusers' --extract_ema does")


def ema_key(key: str) -> str:
    """LDM keeps EMA copies under ``model_ema.`` with the dots of the rest of the name removed."""
    return "model_ema." + "".join(key.split(".")[1:])


def import_checkpoint(source: Path, out: Path, unet_config: str, ema: bool = False) -> MappingReport:
    """Convert ``source`` with diffusers' single-file loader and save a UNet folder at ``out``."""
    import torch
    from diffusers import UNet2DConditionModel

    report = MappingReport("instructdiffusion-ldm")
    state = load_weights(source)
    m = KeyMapping(state, str(source))
    unet_keys = m.keys_with_prefix(LDM_PREFIX)
    if not unet_keys:
        raise ValueError(f"{source}: no '{LDM_PREFIX}*' keys; not an LDM/InstructPix2Pix checkpoint")
    tensors = {k: state[k] for k in unet_keys}
    if ema:
        missing = [k for k in unet_keys if ema_key(k) not in state]
        if missing:
            raise ValueError(f"{source}: --ema given but no EMA copy of {len(missing)} UNet tensors, e.g. "
                             f"{ema_key(missing[0])}; drop --ema")
        tensors = {k: state[ema_key(k)] for k in unet_keys}
        for k in unet_keys:
            m.take(ema_key(k))
            m.mapped += 1
            m.drop(k, "raw (non-EMA) weight: its EMA copy was used")
        report.notes.append("EMA weights (model_ema.*) used; the raw model.diffusion_model.* weights dropped")
    m.drop_matching(lambda k: not k.startswith(LDM_PREFIX), "VAE / text encoder / EMA / schedule buffers: the "
                    "UNet folder holds the UNet only (VAE and CLIP come from SD-1.5)")
    in_channels = int(state[LDM_PREFIX + "input_blocks.0.0.weight"].shape[1])
    config_path = Path(unet_config)
    config_path = config_path / "config.json" if config_path.is_dir() else config_path
    config = json.loads(config_path.read_text())
    config["in_channels"] = in_channels
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        ldm_file = Path(tmp) / "unet.safetensors"
        from safetensors.torch import save_file

        # Only the UNet tensors, as safetensors: diffusers' single-file loader reads it without unpickling.
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(ldm_file))
        unet = UNet2DConditionModel.from_single_file(str(ldm_file), config=tmp, torch_dtype=torch.float32)
    if not ema:
        for key in unet_keys:
            m.take(key)
            m.mapped += 1
    m.finish(None, "unet", report)
    with torch.device("meta"):
        expected = shapes_of(UNet2DConditionModel.from_config(config))
    got = shapes_of(unet)
    if got != expected:
        raise ValueError(f"{source}: converted UNet differs from the config: {sorted(set(got) ^ set(expected))[:5]}")
    report.components["unet"]["target_keys"] = len(got)
    unet.save_pretrained(out)
    report.notes.append(f"in_channels={in_channels}; converted by diffusers' single-file loader")
    return report
