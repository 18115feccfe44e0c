"""MGIE on tiny components: edit head, trainable set, learned null, loss weighting, [IMG] positions, pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.mgie.config import EditHeadConfig, get_mgie_preset, tiny_mgie_config
from model.mgie.positions import img_hidden_positions

torch.set_num_threads(1)


def _image(seed: int = 0, size: int = 32) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def model():
    from model.mgie.model import build_mgie

    return build_mgie(tiny_mgie_config())


def _batch(model, summaries=("The cup turns red.", None)):
    samples = [model.processor.encode(_image(2 * i), f"edit {i}", s, _image(2 * i + 1)) for i, s in enumerate(summaries)]
    return model.processor.collate(samples)


# ------------------------------------------------------------------------------------------------ edit head
def test_edit_head_shapes_and_official_names():
    from model.mgie.edit_head import EditMapper

    head = EditMapper(EditHeadConfig(), llm_hidden_size=4096, context_dim=768)  # the released model's sizes
    out = head(torch.randn(2, 8, 4096), torch.randn(8, 4096))
    assert out.shape == (2, 77, 768)
    names = set(head.state_dict())
    assert {"llm2hid.weight", "query", "hid2feat.bias", "mapper.encoder.layers.3.self_attn.in_proj_weight",
            "mapper.decoder.layers.3.multihead_attn.out_proj.weight", "mapper.encoder.norm.weight"} <= names
    assert not any("layers.4" in n for n in names)
    assert head.query.shape == (1, 77, 512) and head.mapper.encoder.layers[0].norm_first
    assert head.mapper.encoder.layers[0].linear1.out_features == 2048


def test_learned_null_is_the_head_on_zero_states(model):
    head = model.edit_head
    embeds = model.token_embeds()
    assert embeds.shape == (8, 64)
    # independent computation through the three submodules
    hid = head.llm2hid(embeds.unsqueeze(0).expand(3, -1, -1))
    expected = head.hid2feat(head.mapper(hid, head.query.expand(3, -1, -1)))
    null = model.null_condition(3)
    assert null.shape == (3, 77, 32)
    assert torch.allclose(null, expected, atol=1e-6)
    # it is learned: gradients reach the head (and the [IMG] rows) through it
    null.sum().backward()
    assert head.query.grad is not None and head.query.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_cfg_dropout_uses_the_learned_null_and_zero_image(model):
    context = torch.randn(4, 77, 32)
    latents = torch.randn(4, 4, 4, 4)
    r = torch.tensor([0.02, 0.07, 0.12, 0.5])  # text+image dropped, text+image dropped, image only, none
    ctx, lat = model.cfg_dropout(context, latents, r)
    null = model.null_condition(1)[0]
    assert torch.allclose(ctx[0], null) and torch.allclose(ctx[1], null)
    assert torch.equal(ctx[2], context[2]) and torch.equal(ctx[3], context[3])
    assert torch.equal(lat[0], latents[0]) and lat[1].abs().sum() == 0 and lat[2].abs().sum() == 0
    assert torch.equal(lat[3], latents[3])


# ------------------------------------------------------------------------------------------------ training
def test_only_the_intended_parameters_train():
    from model.mgie.model import build_mgie

    model = build_mgie(tiny_mgie_config())
    trainable = model.trainable_parameters()
    llava_names = {n for n in trainable if n.startswith("llava.")}
    assert llava_names == {"llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight"}
    assert any(n.startswith("edit_head.") for n in trainable) and "unet.conv_in.weight" in trainable
    assert not any(n.startswith("vae.") or "vision_tower" in n or "multi_modal_projector" in n or ".layers." in n
                   for n in trainable if n.startswith(("llava.", "vae.")))
    assert sum(p.requires_grad for p in model.parameters()) == len(trainable)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(list(trainable.values()), lr=1e-2)
    model.train()
    model(_batch(model), generator=torch.Generator().manual_seed(0))["loss"].backward()
    opt.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)
    changed = {n for n, p in trainable.items() if not torch.equal(p, trained_before[n])}
    assert {"llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight", "edit_head.query",
            "unet.conv_in.weight"} <= changed


def test_new_rows_option_trains_only_the_img_rows():
    from model.llava import merged_state_dict
    from model.mgie.model import build_mgie

    model = build_mgie(tiny_mgie_config(token_rows="new_rows"))
    trainable = model.trainable_parameters()
    assert {n for n in trainable if n.startswith("llava.")} == {
        "llava.base_model.model.model.language_model.embed_tokens.trainable_tokens_delta.default",
        "llava.base_model.model.lm_head.trainable_tokens_delta.default"}
    before = merged_state_dict(model.llava)
    opt = torch.optim.AdamW(list(trainable.values()), lr=1e-2, weight_decay=0.1)
    model.train()
    model(_batch(model), generator=torch.Generator().manual_seed(0))["loss"].backward()
    opt.step()
    after = merged_state_dict(model.llava)
    ids = model.img_token_ids
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        others = [i for i in range(after[key].shape[0]) if i not in ids]
        assert torch.equal(after[key][others], before[key][others]), key
        assert not torch.equal(after[key][ids], before[key][ids]), key


def test_loss_is_ce_plus_half_mse_computed_independently(model):
    """CE from transformers' own LLaVA loss, MSE from a hand-built UNet pass on the same draws."""
    from model.unet import encode_condition_latents, encode_target_latents

    model.eval()  # no CFG dropout: the draws below are noise, timesteps only
    batch = _batch(model)
    out = model(batch, generator=torch.Generator().manual_seed(3))
    llava = model.llava
    with torch.no_grad():
        hf = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["clip_pixels"], labels=batch["labels"], output_hidden_states=True)
        hidden = hf.hidden_states[-1]
        first = model.img_token_ids[0]
        rows = [hidden[i, (row.index(first) - 1):(row.index(first) + 7)]
                for i, row in enumerate(batch["input_ids"].tolist())]
        context = model.edit_head(torch.stack(rows), model.token_embeds())
        g = torch.Generator().manual_seed(3)
        target = encode_target_latents(model.vae, batch["tgt_pixels"], g)
        cond = encode_condition_latents(model.vae, batch["src_pixels"])
        noise = torch.randn(target.shape, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        noisy = model.noise_scheduler.add_noise(target, noise, t)
        pred = model.unet(torch.cat([noisy, cond], 1), t, encoder_hidden_states=context).sample
        mse = ((pred - noise) ** 2).mean()
    assert float(out["lm_loss"]) == pytest.approx(float(hf.loss), rel=1e-4)
    assert float(out["diffusion_loss"]) == pytest.approx(float(mse), rel=1e-4)
    assert float(out["loss"]) == pytest.approx(float(hf.loss) + 0.5 * float(mse), rel=1e-4)
    assert get_mgie_preset("7b").loss.diffusion_loss_weight == 0.5


def test_answer_is_summary_then_img_tokens_then_eos(model):
    sample = model.processor.encode(_image(0), "make it red", "The cup is red.", _image(1))
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    tok = model.processor.tokenizer
    img = model.img_token_ids
    assert ids[-9:] == img + [tok.eos_token_id]
    answer = [i for i, label in zip(ids, labels) if label != -100]
    assert tok.decode(answer[:-9]) == " The cup is red."
    prompt = tok.decode([i for i, label in zip(ids, labels) if label == -100 and i != model.llava.config.image_token_id])
    assert "what will this image be like if 'make it red'\n" in prompt and prompt.endswith("ASSISTANT:")


# ------------------------------------------------------------------------------------------------ positions
def test_img_positions_with_emitted_tokens():
    first = 100
    seq = [1, 5, 6, 7, 8, 9, 10, 11] + list(range(100, 108)) + [2]  # ... X [IMG0..7] </s>
    # generate's hidden states: one fewer than tokens; positions predict IMG0..IMG7
    assert img_hidden_positions(seq, first, len(seq) - 1) == list(range(7, 15))
    # teacher-forced pass (as many states as tokens): same positions
    assert img_hidden_positions(seq, first, len(seq)) == list(range(7, 15))


def test_img_positions_without_emitted_tokens_use_the_last_eight():
    seq = list(range(1, 31))
    hidden = len(seq) - 1
    assert img_hidden_positions(seq, 100, hidden) == list(range(hidden - 9, hidden - 1))


def test_img_positions_clamped_as_the_demo_when_generation_ends_on_img7():
    seq = [1, 5, 6, 7, 8, 9] + list(range(100, 108))  # no </s>: hit max_new_tokens
    hidden = len(seq) - 1
    assert img_hidden_positions(seq, 100, hidden) == list(range(hidden - 9, hidden - 1))  # min(p, len-9)
    with pytest.raises(ValueError, match="too short"):
        img_hidden_positions([1, 2, 3], 100, 2)


def test_training_reads_the_states_predicting_the_img_tokens(model):
    batch = _batch(model)
    mask = model.predicting_mask(batch["input_ids"])
    img = batch["img_token_mask"]
    assert torch.equal(mask[:, :-1], img[:, 1:]) and mask.sum() == 16


# ------------------------------------------------------------------------------------------------ pipeline
def _perturbed(token_rows="full"):
    from model.mgie.model import build_mgie

    model = build_mgie(tiny_mgie_config(token_rows=token_rows))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def pipe():
    from model.mgie.pipeline import MGIEPipeline

    return MGIEPipeline(_perturbed())


def _edit(pipe, seed=0, **kw):
    return pipe(_image(1), "make the left cup red", num_inference_steps=3, height=32, width=32, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kw)


def test_pipeline_path_equals_diffusers_instruct_pix2pix(pipe):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from model.pipeline import default_scheduler
    from model.processor import pil_to_signed_unit_range

    m = pipe.model
    image = _image(2, 64)
    text, hidden = pipe.express(image, "turn the sky purple")
    assert hidden.shape == (8, 64) and isinstance(text, str)
    with torch.no_grad():
        prompt_embeds = m.condition(hidden[None])
        null = m.null_condition(1)
    reference = StableDiffusionInstructPix2PixPipeline(
        vae=m.vae, text_encoder=None, tokenizer=None, unet=m.unet, scheduler=default_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    tensor = pil_to_signed_unit_range(image, 128)[None].contiguous()
    ref = reference(image=tensor, prompt_embeds=prompt_embeds, negative_prompt_embeds=null, num_inference_steps=4,
                    guidance_scale=7.5, image_guidance_scale=1.5, generator=torch.Generator().manual_seed(0),
                    output_type="latent").images
    ours = pipe(image, "turn the sky purple", num_inference_steps=4, height=128, width=128, output_type="latent",
                generator=torch.Generator().manual_seed(0))
    assert ours.shape == ref.shape == (1, 4, 16, 16)
    assert (ours - ref).abs().max() < 1e-5
    other = pipe(image, "turn the sky purple", num_inference_steps=4, height=128, width=128, output_type="latent",
                 text_guidance_scale=1.0, image_guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert (other - ref).abs().max() > 1e-3
    assert pipe.expressive_instructions == [text]


def test_generation_hidden_states_equal_a_teacher_forced_pass(pipe):
    """The demo's per-step generate states are the same as one teacher-forced pass over the generated ids."""
    from model.llava import base_llava
    from model.mgie.positions import img_hidden_start

    m = pipe.model
    image = _image(3)
    _, hidden = pipe.express(image, "add a hat")
    prompt = m.processor.generation_prompt(image, "add a hat")
    llava = base_llava(m.llava)
    seq = llava.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"],
                         pixel_values=prompt["clip_pixels"], do_sample=False, max_new_tokens=m.config.max_new_tokens,
                         no_repeat_ngram_size=3, pad_token_id=m.processor.pad_token_id)[0].tolist()
    with torch.no_grad():
        full = llava.model(input_ids=torch.tensor([seq]), pixel_values=prompt["clip_pixels"]).last_hidden_state[0]
    p = img_hidden_start(seq, m.img_token_ids[0], len(seq) - 1)
    assert torch.allclose(hidden, full[p:p + 8], atol=1e-5)


def test_pipeline_deterministic_for_a_seed(pipe):
    a, b, c = _edit(pipe, 0), _edit(pipe, 0), _edit(pipe, 1)
    assert a.shape == (1, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("token_rows", ["full", "new_rows"])
def test_save_pretrained_from_pretrained_same_output(token_rows, tmp_path):
    from model.llava import merged_state_dict
    from model.mgie.pipeline import MGIEPipeline
    from model.pipelines import load_pipeline

    pipe = MGIEPipeline(_perturbed(token_rows))
    pipe.save_pretrained(tmp_path / "p")
    for name in ("llava", "edit_head", "unet", "vae", "scheduler", "model_index.json", "mgie_config.json"):
        assert (tmp_path / "p" / name).exists(), name
    loaded = load_pipeline(tmp_path / "p")
    assert isinstance(loaded, MGIEPipeline) and not hasattr(loaded.model.llava, "peft_config")
    merged = merged_state_dict(pipe.model.llava)
    reloaded = loaded.model.llava.state_dict()
    assert set(merged) == set(reloaded)
    assert max(float((merged[k] - reloaded[k]).abs().max()) for k in merged) < 1e-6
    head, head2 = pipe.model.edit_head.state_dict(), loaded.model.edit_head.state_dict()
    assert all(torch.equal(head[k], head2[k]) for k in head)
    assert (_edit(loaded) - _edit(pipe)).abs().max() < 1e-4
