"""The InstructPix2Pix-style denoiser: SD-1.5 UNet with 8 input channels, frozen VAE, DDPM training scheduler.

BIM's spatial output v' is added to the OUTPUT of ``unet.conv_in`` by a forward hook (``SpatialInjection``), so the
UNet stays diffusers' own class and checkpoints stay standard.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

logger = logging.getLogger(__name__)

EDIT_IN_CHANNELS = 8


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = EDIT_IN_CHANNELS) -> UNet2DConditionModel:
    """Widen ``conv_in`` of a stock 4-channel UNet to ``in_channels``; the extra input channels start at zero so the
    widened UNet initially ignores the conditioning latent (as diffusers' InstructPix2Pix training script does).
    No-op for UNets that already have ``in_channels`` (InstructPix2Pix / InstructDiffusion)."""
    import torch
    from torch import nn

    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"UNet conv_in has {old.in_channels} input channels, more than the {in_channels} expected")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    logger.info("widened unet.conv_in from %d to %d input channels (extra zero-initialised)", old.in_channels,
                in_channels)
    return unet


class SpatialInjection:
    """Forward hook on ``unet.conv_in`` adding BIM's v' (B, C, h, w) to its output while active.

    Usage: ``with injection.active(v_prime): unet(...)``. With no features set the hook is the identity."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.features: torch.Tensor | None = None
        self.handle = unet.conv_in.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.features is None:
            return output
        if self.features.shape != output.shape:
            raise ValueError(f"BIM spatial features {tuple(self.features.shape)} do not match unet.conv_in output "
                             f"{tuple(output.shape)}")
        return output + self.features.to(output.dtype)

    @contextmanager
    def active(self, features: torch.Tensor | None) -> Iterator[None]:
        """Add ``features`` to conv_in's output inside the block (None: no injection)."""
        previous, self.features = self.features, features
        try:
            yield
        finally:
            self.features = previous

    def remove(self) -> None:
        """Detach the hook from the UNet."""
        self.handle.remove()


def build_tiny_unet(cross_attention_dim: int, seed: int = 0) -> UNet2DConditionModel:
    """Tiny random 8-channel UNet (diffusers' test sizes): block_out_channels (32, 64)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=EDIT_IN_CHANNELS, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32,
    )


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    """Tiny random VAE: 4 latent channels and SD's four levels (downsampling ×8), so that a 256 px edit runs
    the UNet on 32×32 latents as the real model does (a ×2 VAE would put attention over 128×128)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixel-to-latent downsampling of the VAE (8 for SD-1.5)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_target_latents(vae: AutoencoderKL, pixels: torch.Tensor, generator=None) -> torch.Tensor:
    """Target latent z0 = sample() × scaling_factor; pixels (B, 3, H, W) in [-1, 1] → (B, 4, H/f, W/f)."""
    dist = vae.encode(pixels.to(vae.dtype)).latent_dist
    return dist.sample(generator=generator) * vae.config.scaling_factor


def encode_condition_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Conditioning latent = mode(), unscaled (InstructPix2Pix convention); (B, 3, H, W) → (B, 4, H/f, W/f)."""
    return vae.encode(pixels.to(vae.dtype)).latent_dist.mode()


def training_scheduler(num_train_timesteps: int = 1000):
    """DDPM, ε-prediction, SD-1.5's scaled-linear betas."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False,
    )
