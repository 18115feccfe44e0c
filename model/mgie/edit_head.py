"""The edit head ("EditMapper" in apple/ml-mgie ``mgie_llava.py``): MLLM states → the UNet's text context.

    h   = Linear(D_llm → 512)(hidden at the 8 positions predicting [IMG0..7] + the [IMG0..7] token embeddings)
    f   = nn.Transformer(d=512, 4 heads, 4 encoder + 4 decoder layers, FFN 2048, dropout 0, pre-norm)
          (encoder over h, decoder over 77 learned queries)
    out = Linear(512 → D_ctx)(f)                     (B, 77, 768 for SD-1.5)

The null condition for classifier-free guidance is this same head applied to zero hidden states (``null``), so it
is learned with the head rather than taken from CLIP(""). torch's ``nn.Transformer`` is the official module,
wrapped as is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from model.mgie.config import EditHeadConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "edit_head_config.json"


class EditMapper(nn.Module):
    """Submodule names match the official checkpoint (``llm2hid``, ``query``, ``mapper``, ``hid2feat``)."""

    def __init__(self, config: EditHeadConfig, llm_hidden_size: int, context_dim: int) -> None:
        super().__init__()
        self.config = config
        self.llm_hidden_size = llm_hidden_size
        self.context_dim = context_dim
        self.llm2hid = nn.Linear(llm_hidden_size, config.hidden_size)
        self.query = nn.Parameter(torch.randn(1, config.num_queries, config.hidden_size) * config.query_init_std)
        self.mapper = nn.Transformer(
            d_model=config.hidden_size, nhead=config.num_heads, num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.feedforward_size,
            dropout=config.dropout, batch_first=True, norm_first=True,
        )
        self.hid2feat = nn.Linear(config.hidden_size, context_dim)

    def forward(self, llm_hidden: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        """llm_hidden (B, r, D_llm), token_embeds (r, D_llm) or (B, r, D_llm) → context (B, num_queries, D_ctx)."""
        dtype = self.llm2hid.weight.dtype
        if token_embeds.dim() == 2:
            token_embeds = token_embeds.unsqueeze(0)
        hid = self.llm2hid(llm_hidden.to(dtype) + token_embeds.to(dtype))
        hid = self.mapper(hid, self.query.expand(hid.shape[0], -1, -1))
        return self.hid2feat(hid)

    def null(self, token_embeds: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """The learned null condition: the head on zero hidden states, (batch_size, num_queries, D_ctx)."""
        embeds = token_embeds if token_embeds.dim() == 3 else token_embeds.unsqueeze(0)
        zeros = torch.zeros(batch_size, embeds.shape[-2], self.llm_hidden_size, device=embeds.device,
                            dtype=self.llm2hid.weight.dtype)
        return self(zeros, embeds)

    def save_pretrained(self, directory: str | Path) -> None:
        """config JSON + safetensors weights."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"edit_head": dataclasses.asdict(self.config), "llm_hidden_size": self.llm_hidden_size,
                   "context_dim": self.context_dim}
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> EditMapper:
        """Inverse of ``save_pretrained`` (strict)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not an edit head folder (EditMapper.save_pretrained)")
        payload = json.loads(config_path.read_text())
        module = cls(EditHeadConfig(**payload["edit_head"]), payload["llm_hidden_size"], payload["context_dim"])
        module.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return module
