"""SmartEditPipeline on tiny components: equivalence with diffusers' InstructPix2Pix, persistence, determinism, CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import tiny_config

torch.set_num_threads(1)


def _image(seed: int = 0, size: int = 32) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


def _perturbed_model(seed: int = 0):
    """Tiny model whose trainable parts are moved off their (partly zero) init, as after training."""
    from model.smartedit import build_smartedit

    model = build_smartedit(tiny_config())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def pipe():
    from model.pipeline import SmartEditPipeline

    return SmartEditPipeline(_perturbed_model())


def _edit(pipe, seed=0, **kw):
    return pipe(_image(1), "make the left cup red", num_inference_steps=3, height=32, width=32, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kw)


def test_unet_path_equals_diffusers_instruct_pix2pix(pipe):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from model.processor import pil_to_signed_unit_range

    m = pipe.model
    tok = m.processor.text_tokenizer
    ids = tok("turn the sky purple", padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    prompt_embeds = m.clip_text_embeds(ids["input_ids"])
    # The same contiguous [-1, 1] tensor goes to both: diffusers' PIL path keeps a channels-last layout, which
    # picks another conv kernel (a 1e-6 difference that the random tiny UNet's large latents would amplify).
    image = pil_to_signed_unit_range(_image(2), 128)[None].contiguous()  # 16×16 latents through the ×8 VAE
    reference = StableDiffusionInstructPix2PixPipeline(
        vae=m.vae, text_encoder=m.text_encoder, tokenizer=tok, unet=m.unet,
        # SD-1.5's literal constants, not default_scheduler(): the reference must not move with a bug in ours.
        scheduler=EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                                  beta_schedule="scaled_linear", prediction_type="epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    ref = reference(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=m.null_text_embeds,
                    num_inference_steps=4, guidance_scale=7.5, image_guidance_scale=1.5,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images
    with torch.no_grad():
        image_latents = m.vae.encode(image).latent_dist.mode()
    ours = pipe.denoise(image_latents, prompt_embeds, m.null_text_embeds, None, num_inference_steps=4,
                        text_guidance_scale=7.5, image_guidance_scale=1.5, generator=torch.Generator().manual_seed(0))
    assert ours.shape == ref.shape == (1, 4, 16, 16)
    assert (ours - ref).abs().max() < 1e-5
    # The guidance really matters here (the equality is not between two unconditioned runs).
    other = pipe.denoise(image_latents, prompt_embeds, m.null_text_embeds, None, num_inference_steps=4,
                         text_guidance_scale=1.0, image_guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert (other - ref).abs().max() > 1e-3


def test_pipeline_deterministic_for_a_seed(pipe):
    a, b, c = _edit(pipe, 0), _edit(pipe, 0), _edit(pipe, 1)
    assert a.shape == (1, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    images = pipe([_image(1), _image(2)], ["a", "b"], num_inference_steps=2, height=32, width=32,
                  generator=torch.Generator().manual_seed(0))
    assert len(images) == 2 and images[0].size == (32, 32)


def test_spatial_features_are_used_in_sampling(pipe):
    base = _edit(pipe)
    with torch.no_grad():
        pipe.model.bim.image_out.weight.mul_(10)
    try:
        changed = _edit(pipe)
    finally:
        with torch.no_grad():
            pipe.model.bim.image_out.weight.div_(10)
    assert (changed - base).abs().max() > 1e-4


def test_save_pretrained_from_pretrained_same_output(pipe, tmp_path):
    from model.pipeline import SmartEditPipeline

    pipe.save_pretrained(tmp_path / "p")
    for name in ("llava", "qformer", "bim", "unet", "vae", "scheduler", "model_index.json",
                 "smartedit_config.json", "null_text_embeds.safetensors"):
        assert (tmp_path / "p" / name).exists(), name
    loaded = SmartEditPipeline.from_pretrained(tmp_path / "p")
    assert not hasattr(loaded.model.llava, "peft_config")  # LoRA merged: a plain transformers model
    assert loaded.model.text_encoder is None  # the null condition comes from the saved tensor
    # Same merged weights as the live (peft) model, key for key.
    from model.llava import base_llava, merged_state_dict

    merged = merged_state_dict(pipe.model.llava)
    reloaded = loaded.model.llava.state_dict()
    assert set(merged) == set(reloaded)
    assert max((merged[k] - reloaded[k]).abs().max() for k in merged) < 1e-6
    assert (_edit(loaded) - _edit(pipe)).abs().max() < 1e-4


def test_components_saved_to_disk_load_like_a_real_preset(tmp_path):
    from model.smartedit import build_smartedit
    from model.tiny import make_tiny_components

    config = make_tiny_components(tmp_path / "tiny")
    from_disk = build_smartedit(config).eval()
    in_code = build_smartedit(tiny_config()).eval()
    batch = in_code.processor([_image(3)], ["make it blue"], targets=[_image(4)])
    with torch.no_grad():
        a = in_code(batch, generator=torch.Generator().manual_seed(0))
        b = from_disk(batch, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a["loss"], b["loss"], atol=1e-5)


def test_cli_edit(pipe, tmp_path, capsys):
    from smartedit_cli.edit import register

    pipe.save_pretrained(tmp_path / "p")
    _image(5).save(tmp_path / "in.png")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["edit", "--model", str(tmp_path / "p"), "--image", str(tmp_path / "in.png"),
                              "--instruction", "make it red", "-o", str(tmp_path / "out" / "o.png"), "--steps", "2",
                              "--size", "32", "--device", "cpu"])
    assert args.func(args) == 0
    assert Image.open(tmp_path / "out" / "o.png").size == (32, 32)
    args = parser.parse_args(["edit", "--model", str(tmp_path / "missing"), "--image", str(tmp_path / "in.png"),
                              "--instruction", "x", "-o", str(tmp_path / "o2.png")])
    assert args.func(args) == 1
    assert "smartedit_config.json" in capsys.readouterr().err


def test_bf16_pipeline_runs_and_keeps_the_position_matrix_fp32(pipe, tmp_path):
    """On GPU the pipeline runs in bf16; SAM's position embedding builds an fp32 grid and must still multiply."""
    from model.pipeline import SmartEditPipeline

    pipe.save_pretrained(tmp_path / "p")
    half = SmartEditPipeline.from_pretrained(tmp_path / "p").to("cpu", torch.bfloat16)
    assert half.model.unet.dtype == torch.bfloat16
    assert half.model.bim.position_embedding.positional_encoding_gaussian_matrix.dtype == torch.float32
    out = _edit(half, 0)
    reference = _edit(pipe, 0)
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert (out.float() - reference).abs().mean() < 0.1  # same model, lower precision: close, not equal
