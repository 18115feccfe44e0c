"""Bidirectional Interaction Module (BIM): text context f and CLIP patch features v inform each other.

Text side: f (B, 77, D_text) → Linear → SAM TwoWayTransformer queries; image side: v (B, N, D_vision) on its
sqrt(N)×sqrt(N) grid with SAM's random Fourier position embedding as keys. Outputs:
  f'' = f + s · Linear_zero(f')                          (B, 77, D_text), s = 0.5
  v'  = Conv_zero(bilinear(v' grid → latent size))       (B, C_unet, h, w), added to the output of ``unet.conv_in``
Both heads are zero-initialised, so at initialisation the UNet sees exactly f and nothing extra.
The TwoWayTransformer and PositionEmbeddingRandom come from segment-anything (the official code's choice).

Variants (paper Table 2): ``bim``; ``plain`` (f'' = f, no v'); ``cross_attention`` (f queries v once through
``nn.MultiheadAttention``, f'' = f + s · Linear_zero(attn), no v').
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BIMConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "bim_config.json"


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class BidirectionalInteractionModule(nn.Module):
    """See the module docstring. Widths: text_dim (QFormer/UNet context), vision_dim (CLIP), unet_channels (conv_in)."""

    def __init__(self, config: BIMConfig, text_dim: int, vision_dim: int, unet_channels: int) -> None:
        super().__init__()
        self.config = config
        self.text_dim, self.vision_dim, self.unet_channels = text_dim, vision_dim, unet_channels
        if config.variant == "plain":
            return
        if config.embedding_dim != vision_dim:
            raise ValueError(
                f"BIMConfig.embedding_dim={config.embedding_dim} must equal the CLIP vision width {vision_dim} "
                f"(image features enter the TwoWayTransformer unprojected); set bim.embedding_dim={vision_dim}"
            )
        dim = config.embedding_dim
        self.text_in = nn.Linear(text_dim, dim)
        self.text_out = _zero(nn.Linear(dim, text_dim))
        if config.variant == "cross_attention":
            self.cross_attention = nn.MultiheadAttention(dim, config.num_heads, batch_first=True)
            return
        from segment_anything.modeling import TwoWayTransformer
        from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

        self.transformer = TwoWayTransformer(
            depth=config.depth,
            embedding_dim=dim,
            num_heads=config.num_heads,
            mlp_dim=config.mlp_dim,
            activation=nn.ReLU,
            attention_downsample_rate=config.attention_downsample_rate,
        )
        self.position_embedding = PositionEmbeddingRandom(dim // 2)
        self.image_out = _zero(nn.Conv2d(dim, unet_channels, kernel_size=1))

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, latent_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """text f: (B, 77, text_dim); image v: (B, N, vision_dim), N a square; latent_size (h, w).
        Returns (f'' (B, 77, text_dim), v' (B, unet_channels, h, w) or None for plain / cross_attention)."""
        variant = self.config.variant
        if variant == "plain":
            return text, None
        image = image.to(self.text_in.weight.dtype)
        queries = self.text_in(text)
        if variant == "cross_attention":
            attended, _ = self.cross_attention(queries, image, image, need_weights=False)
            return text + self.config.text_residual_scale * self.text_out(attended), None
        b, n, c = image.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"BIM expects a square patch grid, got {n} patch tokens")
        grid = image.transpose(1, 2).reshape(b, c, side, side)
        pe = self.position_embedding((side, side)).unsqueeze(0).to(grid.dtype)
        text_feats, image_feats = self.transformer(grid, pe, queries)
        text_out = text + self.config.text_residual_scale * self.text_out(text_feats)
        spatial = image_feats.transpose(1, 2).reshape(b, c, side, side)
        spatial = F.interpolate(spatial, size=tuple(latent_size), mode="bilinear", align_corners=False)
        return text_out, self.image_out(spatial)

    def _apply(self, fn, recurse=True):
        # SAM's PositionEmbeddingRandom builds its coordinate grid in fp32 and multiplies it by its Gaussian
        # matrix, so that buffer must stay fp32 whatever dtype the rest of the module is cast to (bf16 on GPU);
        # device moves still apply. The embedding itself is cast to the features' dtype in forward().
        # Only the 'bim' variant has the position embedding ('plain' and 'cross_attention' have none).
        super()._apply(fn, recurse)
        pe = getattr(self, "position_embedding", None)
        if pe is not None:
            pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        return self

    def save_pretrained(self, directory: str | Path) -> None:
        """config JSON + safetensors weights (includes SAM's random position matrix, a buffer)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"bim": self.config.__dict__, "text_dim": self.text_dim, "vision_dim": self.vision_dim,
                   "unet_channels": self.unet_channels}
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BidirectionalInteractionModule:
        """Inverse of ``save_pretrained``."""
        from safetensors.torch import load_file

        directory = Path(directory)
        payload = json.loads((directory / CONFIG_NAME).read_text())
        module = cls(BIMConfig(**payload["bim"]), payload["text_dim"], payload["vision_dim"], payload["unet_channels"])
        if (directory / WEIGHTS_NAME).is_file():
            module.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return module
