"""Pins the model behaviours a bug could change silently: CFG dropout bands and firing in training (nothing mocked:
the real dropout runs and a spy reads what the UNet receives), v' in all three guidance branches, the guidance
formula with the default scales, SD-1.5's scheduler constants, BIM's text residual scale 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.config import BIMConfig, LossConfig, SamplingConfig, tiny_config

torch.set_num_threads(1)


def _image(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def model():
    """Tiny model with its trainable parts (zero-initialised BIM heads included) moved off their init."""
    from model.smartedit import build_smartedit

    m = build_smartedit(tiny_config())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.set_trainable(2)
        for p in m.trainable_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m


# -- CFG dropout --------------------------------------------------------------------------------------------------------
def test_paper_dropout_constants():
    loss = LossConfig()
    assert loss.text_drop_below == 0.10 and tuple(loss.image_drop_range) == (0.05, 0.15)


def test_cfg_dropout_band_edges(model):
    r = torch.tensor([0.0, 0.0499, 0.05, 0.0999, 0.10, 0.1499, 0.15, 0.9], dtype=torch.float64)
    ctx, cond = torch.randn(8, 77, 32), torch.randn(8, 4, 4, 4) + 3.0
    ctx2, cond2 = model.cfg_dropout(ctx, cond, r)
    null = model.null_text_embeds[0]
    text_dropped = [torch.equal(ctx2[i], null) for i in range(8)]
    image_dropped = [bool((cond2[i] == 0).all()) for i in range(8)]
    assert text_dropped == [True, True, True, True, False, False, False, False]  # r < 0.10
    assert image_dropped == [False, False, True, True, True, True, False, False]  # 0.05 <= r < 0.15
    for i in range(8):  # what is kept is untouched
        if not text_dropped[i]:
            assert torch.equal(ctx2[i], ctx[i])
        if not image_dropped[i]:
            assert torch.equal(cond2[i], cond[i])


def _spy_unet_inputs(model, monkeypatch):
    seen = []
    real = type(model).predict_noise

    def spy(self, noisy, t, cond, ctx, spatial):
        seen.append((cond.detach().clone(), ctx.detach().clone(), spatial))
        return real(self, noisy, t, cond, ctx, spatial)

    monkeypatch.setattr(type(model), "predict_noise", spy)
    return seen


def test_dropout_fires_in_training_and_never_in_eval(model, monkeypatch):
    seen = _spy_unet_inputs(model, monkeypatch)
    b = 48
    edit = {"src_pixels": torch.rand(b, 3, 32, 32) * 2 - 1, "tgt_pixels": torch.rand(b, 3, 32, 32) * 2 - 1}
    g = torch.Generator().manual_seed(0)
    context = torch.randn(b, 77, 32) + 1.0
    spatial = torch.randn(b, 32, 4, 4)
    model.train()
    try:
        loss = model.diffusion_loss(edit, context, spatial, generator=g)
    finally:
        model.eval()
    assert torch.isfinite(loss)
    cond, ctx, sp = seen[-1]
    assert sp is spatial  # v' is never dropped
    null = model.null_text_embeds[0]
    text = torch.tensor([torch.equal(ctx[i], null) for i in range(b)])
    image = torch.tensor([bool((cond[i] == 0).all()) for i in range(b)])
    kept_ctx = torch.tensor([torch.equal(ctx[i], context[i]) for i in range(b)])
    assert bool((text ^ kept_ctx).all())  # each row: the null context or its own, nothing else
    # Fixed seed: the real dropout fires for both conditions; both at once only in [0.05, 0.10).
    assert 1 <= int(text.sum()) <= 12 and 1 <= int(image.sum()) <= 12
    assert int((text & image).sum()) <= min(int(text.sum()), int(image.sum()))
    # With the same draws, eval mode leaves every row conditioned.
    seen.clear()
    model.diffusion_loss(edit, context, spatial, generator=torch.Generator().manual_seed(0))
    cond, ctx, _ = seen[-1]
    assert torch.equal(ctx, context) and all(bool(cond[i].abs().sum() > 0) for i in range(b))


def test_dropout_rate_matches_the_bands():
    """Independent of the model: the fraction of U(0,1) draws in each band is what the paper's rates say."""
    from model.smartedit import SmartEditModel

    class Stub:
        config = tiny_config()
        null_text_embeds = torch.zeros(1, 77, 8)

    r = torch.rand(20000, generator=torch.Generator().manual_seed(1))
    ctx, cond = SmartEditModel.cfg_dropout(Stub(), torch.ones(20000, 77, 8), torch.ones(20000, 4, 1, 1), r)
    text_rate = float((ctx[:, 0, 0] == 0).float().mean())
    image_rate = float((cond[:, 0, 0, 0] == 0).float().mean())
    both = float(((ctx[:, 0, 0] == 0) & (cond[:, 0, 0, 0] == 0)).float().mean())
    assert abs(text_rate - 0.10) < 0.01 and abs(image_rate - 0.10) < 0.01 and abs(both - 0.05) < 0.01


# -- BIM ----------------------------------------------------------------------------------------------------------------
def test_bim_text_residual_scale_is_one_half(model):
    assert BIMConfig().text_residual_scale == 0.5
    bim = model.bim
    assert bim.config.text_residual_scale == 0.5
    captured = {}
    handle = bim.text_out.register_forward_hook(lambda mod, inp, out: captured.update(out=out))
    try:
        f = torch.randn(2, 77, 32)
        with torch.no_grad():
            out, spatial = bim(f, torch.randn(2, 16, _vision_width(model)), (4, 4))
    finally:
        handle.remove()
    assert captured["out"].abs().max() > 1e-3  # the residual branch is not zero (weights perturbed)
    torch.testing.assert_close(out, f + 0.5 * captured["out"])
    assert spatial.shape == (2, model.unet.config.block_out_channels[0], 4, 4)


def _vision_width(model) -> int:
    from model.llava import base_llava

    return base_llava(model.llava).config.vision_config.hidden_size


# -- inference ----------------------------------------------------------------------------------------------------------
def test_default_scheduler_has_sd15_literal_constants():
    from diffusers import EulerAncestralDiscreteScheduler

    from model.pipeline import SmartEditPipeline, default_scheduler

    sched = default_scheduler()
    assert isinstance(sched, EulerAncestralDiscreteScheduler)
    # SD-1.5's v1-inference.yaml: linear_start 0.00085, linear_end 0.012, 1000 steps, "scaled_linear" = linear in sqrt.
    expected = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sched.betas.double(), expected, rtol=1e-5, atol=1e-9)
    assert sched.config.prediction_type == "epsilon" and sched.config.num_train_timesteps == 1000
    assert isinstance(SmartEditPipeline(object()).scheduler, EulerAncestralDiscreteScheduler)  # the default


def test_paper_sampling_defaults():
    s = SamplingConfig()
    assert (s.num_inference_steps, s.text_guidance_scale, s.image_guidance_scale) == (100, 7.5, 1.5)
    t = tiny_config().sampling
    assert (t.text_guidance_scale, t.image_guidance_scale) == (7.5, 1.5)


@pytest.fixture(scope="module")
def pipe(model):
    from model.pipeline import SmartEditPipeline

    return SmartEditPipeline(model.eval())


def test_three_branches_get_spatial_features_and_default_guidance(pipe, monkeypatch):
    """Spy on conv_in and on the scheduler's step: v' is added in all three branches, the branches are [text+image,
    image, none], and the ε handed to the sampler is ε_u + 7.5 (ε_ti − ε_i) + 1.5 (ε_i − ε_u) with defaults."""
    m = pipe.model
    conv = m.unet.conv_in
    records = {"conv": [], "eps": [], "step": []}
    hook = conv.register_forward_hook(lambda mod, inp, out: records["conv"].append((inp[0].clone(), out.clone())))
    real_predict = type(m).predict_noise

    def predict_spy(self, noisy, t, cond, ctx, spatial):
        eps = real_predict(self, noisy, t, cond, ctx, spatial)
        records["eps"].append((eps.clone(), cond.clone(), ctx.clone()))
        return eps

    real_step = pipe.scheduler.step

    def step_spy(eps, t, latents, **kw):
        records["step"].append(eps.clone())
        return real_step(eps, t, latents, **kw)

    monkeypatch.setattr(type(m), "predict_noise", predict_spy)
    monkeypatch.setattr(pipe.scheduler, "step", step_spy)
    image_latents = torch.randn(1, 4, 4, 4)
    context = torch.randn(1, 77, 32)
    spatial = torch.randn(1, conv.out_channels, 4, 4)
    try:
        pipe.denoise(image_latents, context, m.null_text_embeds, spatial, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert len(records["conv"]) == len(records["eps"]) == len(records["step"]) == 2
    for (inp, out), (eps, cond, ctx), stepped in zip(records["conv"], records["eps"], records["step"]):
        raw = F.conv2d(inp, conv.weight, conv.bias, padding=conv.padding)
        added = out - raw
        assert added.shape[0] == 3
        for branch in range(3):
            torch.testing.assert_close(added[branch:branch + 1], spatial, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cond, torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)]))
        null = m.null_text_embeds
        assert torch.equal(ctx[0:1], context) and torch.equal(ctx[1:2], null) and torch.equal(ctx[2:3], null)
        e_ti, e_i, e_u = eps.chunk(3)
        torch.testing.assert_close(stepped, e_u + 7.5 * (e_ti - e_i) + 1.5 * (e_i - e_u))


def test_call_defaults_equal_the_paper_scales(pipe):
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="latent")
    a = pipe(_image(1), "make the cup red", generator=torch.Generator().manual_seed(0), **kw)
    b = pipe(_image(1), "make the cup red", generator=torch.Generator().manual_seed(0), text_guidance_scale=7.5,
             image_guidance_scale=1.5, **kw)
    c = pipe(_image(1), "make the cup red", generator=torch.Generator().manual_seed(0), text_guidance_scale=7.5,
             image_guidance_scale=1.2, **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# -- training bookkeeping -----------------------------------------------------------------------------------------------
def test_frozen_and_trainable_parts_per_stage(model):
    try:
        model.set_trainable(1)
        one = model.trainable_parameters()
        assert one and all(n.startswith("qformer.") or "trainable_tokens_delta" in n for n in one)
        assert not any("lora_" in n for n in one)
        model.set_trainable(2)
        two = model.trainable_parameters()
        assert any("lora_" in n for n in two) and any(n.startswith("bim.") for n in two)
        assert any(n.startswith("unet.") for n in two)
        assert not any(p.requires_grad for p in model.vae.parameters())
        model.train()
        assert model.training and model.qformer.training and not model.vae.training  # frozen encoders stay in eval
        model.eval()
        model.set_trainable(2, train_bim=False)
        no_bim = model.trainable_parameters()
        assert not any(n.startswith("bim.") for n in no_bim)
    finally:
        model.set_trainable(2)


def test_stage2_loss_weights_and_edit_rows_only(model, monkeypatch):
    batch = model.processor(
        [_image(0), _image(1), _image(2)], ["make the left cup red", "what is on the table?", "remove the dog"],
        answers=[None, "two cups", None], targets=[_image(10), None, _image(12)],
    )
    assert batch["is_edit"].tolist() == [1, 0, 1] or batch["is_edit"].tolist() == [True, False, True]
    rows = []
    real = type(model).diffusion_loss

    def spy(self, edit_batch, context, spatial, generator=None):
        rows.append((edit_batch["src_pixels"].shape[0], context.shape[0]))
        return real(self, edit_batch, context, spatial, generator)

    monkeypatch.setattr(type(model), "diffusion_loss", spy)
    loss_cfg = model.config.loss
    monkeypatch.setattr(loss_cfg, "lm_loss_weight", 2.0)
    monkeypatch.setattr(loss_cfg, "diffusion_loss_weight", 3.0)
    model.eval()
    with torch.no_grad():
        out = model(batch, stage=2, generator=torch.Generator().manual_seed(0))
    assert rows == [(2, 2)]  # the VQA row never reaches the diffusion loss
    torch.testing.assert_close(out["loss"], 2.0 * out["lm_loss"] + 3.0 * out["diffusion_loss"])


def test_strict_trainable_load_names_missing_and_unexpected_keys(model):
    state = model.trainable_state_dict()
    some = sorted(state)[0]
    partial = {k: v for k, v in state.items() if k != some}
    with pytest.raises(KeyError, match="missing"):
        model.load_trainable_state_dict(partial)
    with pytest.raises(KeyError, match="unexpected"):
        model.load_trainable_state_dict({**state, "unet.nonsense": torch.zeros(1)})
    # not strict: what both sides have is loaded and the two lists are returned for the caller to judge
    keys = model.load_trainable_state_dict({**partial, "unet.nonsense": torch.zeros(1)}, strict=False)
    assert list(keys.missing) == [some] and list(keys.unexpected) == ["unet.nonsense"]


def test_decode_unscales_the_latents(pipe):
    kw = dict(num_inference_steps=2, height=32, width=32)
    latents = pipe(_image(1), "make it red", generator=torch.Generator().manual_seed(0), output_type="latent", **kw)
    pixels = pipe(_image(1), "make it red", generator=torch.Generator().manual_seed(0), output_type="pt", **kw)
    vae = pipe.model.vae
    with torch.no_grad():
        expected = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(pixels, expected)
    assert vae.config.scaling_factor != 1.0
