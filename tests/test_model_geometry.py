"""One geometric transform for both views of a non-square image: the CLIP view (LLM and BIM) and the UNet view
(the latents v' is added to) see the same part of the image, in training (processor.encode), inference and
evaluation (SmartEditPipeline, which uses the same processor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def processor():
    from model.config import tiny_config
    from model.llava import add_img_tokens, build_tiny_llava, num_image_placeholders
    from model.processor import SmartEditProcessor

    llava, tokenizer, image_processor = build_tiny_llava()
    config = tiny_config(resolution=64)
    add_img_tokens(tokenizer, config)
    return SmartEditProcessor(tokenizer, image_processor, config, llava.config.image_token_id,
                              num_image_placeholders(llava.config))


def _strip_image(width: int = 128, height: int = 32, strip: float = 0.25) -> Image.Image:
    """4:1 image, blue, with a red strip over the leftmost ``strip`` of the width."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[..., 2] = 255
    a[:, : int(width * strip)] = (255, 0, 0)
    return Image.fromarray(a)


def _red_fraction(rgb01: torch.Tensor) -> float:
    """Fraction of columns that are red in a (3, H, W) image in [0, 1]."""
    red = (rgb01[0] > 0.5) & (rgb01[2] < 0.5)
    return float(red.float().mean(dim=0).gt(0.5).float().mean())


def test_clip_and_unet_views_see_the_same_fraction_of_a_strip(processor):
    sample = processor.encode(_strip_image(), "make the strip green", target=_strip_image())
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)
    clip_view = sample["clip_pixels"] * std + mean
    unet_view = (sample["src_pixels"] + 1) / 2
    assert clip_view.shape[-2:] == (32, 32) and unet_view.shape[-2:] == (64, 64)
    # Computed independently: the strip is 32 of 128 columns = 25 % of the width in any squashed view.
    assert _red_fraction(clip_view) == pytest.approx(0.25, abs=1 / 32)
    assert _red_fraction(unet_view) == pytest.approx(0.25, abs=1 / 64)
    # The processor's own centre crop would have cut the strip away entirely (what the BIM used to see).
    cropped = torch.from_numpy(ip(images=_strip_image(), return_tensors="np")["pixel_values"][0]) * std + mean
    assert _red_fraction(cropped) == 0.0


def test_pipeline_views_match_training_views(processor):
    """Inference builds the CLIP view through the same processor call and the UNet view with the same squash."""
    from model.processor import pil_to_signed_unit_range

    image = _strip_image(96, 48, strip=0.5)
    batch = processor([image], ["x"])
    train = processor.encode(image, "x")
    torch.testing.assert_close(batch["clip_pixels"][0], train["clip_pixels"])
    torch.testing.assert_close(pil_to_signed_unit_range(image, (64, 64)), train["src_pixels"])
