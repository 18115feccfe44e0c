"""The paper's Table 2 ablation variants ('bim', 'plain', 'cross_attention') survive dtype/device casts and
accelerate.prepare, and each trains for a step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import BIMConfig, tiny_config

torch.set_num_threads(1)
VARIANTS = ["bim", "plain", "cross_attention"]


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8"))


def _config(variant: str):
    return tiny_config(bim=BIMConfig(variant=variant, depth=1, embedding_dim=32, num_heads=2, mlp_dim=64))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bim_variant_casts(variant):
    from model.bim import BidirectionalInteractionModule

    bim = BidirectionalInteractionModule(_config(variant).bim, text_dim=32, vision_dim=32, unet_channels=32)
    bim.to(torch.bfloat16)
    params = list(bim.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    if variant == "bim":  # SAM's position matrix stays fp32 whatever the cast
        assert bim.position_embedding.positional_encoding_gaussian_matrix.dtype == torch.float32
    text, image = torch.randn(2, 77, 32, dtype=torch.bfloat16), torch.randn(2, 16, 32, dtype=torch.bfloat16)
    out, spatial = bim(text, image, (4, 4))
    assert out.shape == (2, 77, 32) and out.dtype == torch.bfloat16
    assert (spatial is None) == (variant != "bim")
    bim.float().to("cpu")
    assert all(p.dtype == torch.float32 for p in bim.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_one_step_through_accelerate(variant):
    from accelerate import Accelerator

    from model.smartedit import build_smartedit

    model = build_smartedit(_config(variant)).train()
    model.to(torch.bfloat16).float()  # the cast that used to crash 'plain' and 'cross_attention'
    model.set_trainable(2)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    batch = model.processor([_image(0), _image(1)], ["make the cup red", "remove the dog"],
                            targets=[_image(10), _image(11)])
    before = {n: p.detach().clone() for n, p in params.items()}
    out = model(batch, generator=torch.Generator().manual_seed(0))
    accelerator.backward(out["loss"])
    optimizer.step()
    assert torch.isfinite(out["loss"])
    changed = {n.split(".")[0] for n, p in params.items() if not torch.equal(before[n], p.detach())}
    assert {"qformer", "unet"} <= changed
    has_bim_params = any(n.startswith("bim.") for n in params)
    assert has_bim_params == (variant != "plain")
    if variant == "bim":  # the text head is zero-initialised; after one step both BIM heads moved
        assert "bim" in changed
