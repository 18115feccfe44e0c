"""QFormer: maps the LLM's [IMG] hidden states (B, r, D_llm) to a CLIP-text-shaped context (B, 77, 768).

transformers' ``Blip2QFormerModel`` configures exactly as the paper needs (layers, width, heads, FFN, cross-attention
every n-th layer, encoder width = LLM width), so it is wrapped, not rewritten; only the 77 learned queries live here
(BLIP-2 keeps its queries in the outer model too).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from model.config import QFormerConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "qformer_config.json"


class QFormer(nn.Module):
    """77 learned queries N(0, 0.02) cross-attending the LLM's [IMG] states through a BLIP-2 QFormer."""

    def __init__(self, config: QFormerConfig, encoder_hidden_size: int) -> None:
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        self.config = config
        self.encoder_hidden_size = encoder_hidden_size
        hf_config = Blip2QFormerConfig(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            cross_attention_frequency=config.cross_attention_frequency,
            encoder_hidden_size=encoder_hidden_size,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
        )
        self.qformer = Blip2QFormerModel(hf_config)
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, config.hidden_size) * config.query_init_std)

    def forward(self, llm_hidden: torch.Tensor) -> torch.Tensor:
        """llm_hidden: (B, r, D_llm) → (B, num_queries, hidden_size)."""
        queries = self.queries.expand(llm_hidden.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=llm_hidden.float()).last_hidden_state

    def save_pretrained(self, directory: str | Path) -> None:
        """config JSON + safetensors weights."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"qformer": self.config.__dict__, "encoder_hidden_size": self.encoder_hidden_size}
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> QFormer:
        """Inverse of ``save_pretrained``."""
        from safetensors.torch import load_file

        directory = Path(directory)
        payload = json.loads((directory / CONFIG_NAME).read_text())
        module = cls(QFormerConfig(**payload["qformer"]), payload["encoder_hidden_size"])
        module.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return module
