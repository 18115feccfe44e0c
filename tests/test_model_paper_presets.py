"""Presets for the paper's base model (LLaVA-1.1, one Linear projector) and the released weights' prompt."""

from __future__ import annotations

import pytest

from model.config import PROMPT_TEMPLATES, SmartEditConfig, get_preset


@pytest.mark.parametrize("name", ["7b-paper", "13b-paper"])
def test_paper_presets_use_llava_11_projector_and_paper_lora(name):
    cfg = get_preset(name)
    assert cfg.projector == "linear"
    assert (cfg.lora.r, cfg.lora.alpha) == (16, 27)
    assert get_preset(name, projector="mlp2x_gelu").projector == "mlp2x_gelu"  # still overridable
    assert get_preset("7b").projector == "mlp2x_gelu"


def test_official_prompt_preset_wraps_the_image_and_ends_with_the_reply():
    template = PROMPT_TEMPLATES["smartedit-official"]
    assert template.startswith("A chat between a curious user")
    assert '"<im_start>{image}<im_end>{instruction}"?' in template
    assert template.endswith("ASSISTANT: Certainly, I can create the image you requested")
    SmartEditConfig(prompt_template=template)  # valid: has {image} and {instruction}
    with pytest.raises(ValueError, match="projector"):
        SmartEditConfig(projector="mlp3x")
