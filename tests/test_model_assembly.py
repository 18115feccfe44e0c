"""build_smartedit = assemble_smartedit(config, load_components(config)): parts can be injected (benchmarks, tests)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import tiny_config


def test_assembling_injected_parts_needs_no_directories_and_matches_build():
    from model.smartedit import assemble_smartedit, build_smartedit, load_components
    from model.tiny import build_tiny_components

    config = tiny_config()
    built = build_smartedit(config)
    # a config whose directories do not exist: loading would fail, assembling in-memory parts does not
    elsewhere = dataclasses.replace(config, llava_dir="/nonexistent/llava", unet_dir="/nonexistent/unet",
                                    vae_dir="/nonexistent/vae", clip_text_dir="/nonexistent/clip")
    with pytest.raises(FileNotFoundError, match="llava_dir"):
        load_components(elsewhere)
    assembled = assemble_smartedit(elsewhere, build_tiny_components(config))
    assert built.trainable_state_dict().keys() == assembled.trainable_state_dict().keys()
    for name, value in built.trainable_state_dict().items():
        assert torch.equal(value, assembled.trainable_state_dict()[name]), name  # same seed, same parts, same init


def test_assembling_names_missing_parts():
    from model.smartedit import assemble_smartedit
    from model.tiny import build_tiny_components

    parts = build_tiny_components(tiny_config())
    with pytest.raises(ValueError, match=r"parts \['vae'\] are missing"):
        assemble_smartedit(tiny_config(), {k: v for k, v in parts.items() if k != "vae"})
    with pytest.raises(ValueError, match="text_encoder"):
        assemble_smartedit(tiny_config(), {k: v for k, v in parts.items() if not k.startswith("text_")})
