"""Tiny random components for tests and smoke runs: built in code (no downloads), or saved to disk in the same
layout real presets load from, so the from_pretrained paths are exercised for real."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from model.config import SmartEditConfig, tiny_config


def build_tiny_text_encoder(hidden_size: int, seed: int = 0):
    """Tiny random CLIPTextModel (hidden_size wide, 77 positions) and its offline tokenizer."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from model.llava import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(clip_style=True)
    config = CLIPTextConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=hidden_size,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval(), tokenizer


def build_tiny_components(config: SmartEditConfig) -> dict[str, Any]:
    """Every pretrained part of the tiny preset, random with ``config.seed``; widths follow the config."""
    from model.llava import build_tiny_llava
    from model.unet import build_tiny_unet, build_tiny_vae

    llava, tokenizer, image_processor = build_tiny_llava(config.seed)
    text_encoder, text_tokenizer = build_tiny_text_encoder(config.qformer.hidden_size, config.seed + 1)
    return {
        "llava": llava,
        "tokenizer": tokenizer,
        "image_processor": image_processor,
        "unet": build_tiny_unet(config.qformer.hidden_size, config.seed + 2),
        "vae": build_tiny_vae(config.seed + 3).eval(),
        "text_encoder": text_encoder,
        "text_tokenizer": text_tokenizer,
    }


def make_tiny_components(directory: str | Path, seed: int = 0, **overrides: Any) -> SmartEditConfig:
    """Save tiny random parts as llava/, unet/, vae/, clip_text/ under ``directory`` (the real presets' layout)
    and return a tiny config pointing at them."""
    directory = Path(directory)
    config = tiny_config(seed=seed, **overrides)
    parts = build_tiny_components(config)
    parts["llava"].save_pretrained(directory / "llava")
    parts["tokenizer"].save_pretrained(directory / "llava")
    parts["image_processor"].save_pretrained(directory / "llava")
    parts["unet"].save_pretrained(directory / "unet")
    parts["vae"].save_pretrained(directory / "vae")
    parts["text_encoder"].save_pretrained(directory / "clip_text")
    parts["text_tokenizer"].save_pretrained(directory / "clip_text")
    return dataclasses.replace(
        config,
        llava_dir=str(directory / "llava"),
        unet_dir=str(directory / "unet"),
        vae_dir=str(directory / "vae"),
        clip_text_dir=str(directory / "clip_text"),
    )
