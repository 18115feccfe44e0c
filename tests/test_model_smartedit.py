"""The composed SmartEditModel on the tiny preset: trainable sets, losses, zero-init equivalence, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import tiny_config

torch.set_num_threads(1)


def _image(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def model():
    from model.smartedit import build_smartedit

    return build_smartedit(tiny_config())


@pytest.fixture()
def batch(model):
    return model.processor(
        [_image(0), _image(1), _image(2)], ["make the left cup red", "what is on the table?", "remove the dog"],
        answers=[None, "two cups", None], targets=[_image(10), None, _image(12)],
    )


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def test_trainable_parameters_per_stage_match_independent_count(model):
    cfg, inner = model.config, model.llava.get_base_model()
    d_llm = inner.config.text_config.hidden_size
    n_layers = inner.config.text_config.num_hidden_layers
    r = cfg.lora.r
    rows = 2 * cfg.num_img_tokens * d_llm  # embed_tokens + lm_head rows of the new tokens
    qformer = _numel(model.qformer.parameters())
    lora = n_layers * 2 * (r * d_llm + d_llm * r)  # q_proj and v_proj, A and B (square d_llm projections)
    bim = _numel(model.bim.parameters())
    unet = _numel(model.unet.parameters())

    model.set_trainable(1)
    stage1 = model.trainable_parameters()
    assert _numel(stage1.values()) == rows + qformer
    assert {p for p in model.parameters() if p.requires_grad} == set(stage1.values())

    model.set_trainable(2, train_bim=False)
    no_bim = model.trainable_parameters()
    assert _numel(no_bim.values()) == rows + qformer + lora + unet
    assert not any(p.requires_grad for p in model.bim.parameters())

    model.set_trainable(2)
    stage2 = model.trainable_parameters()
    assert _numel(stage2.values()) == rows + qformer + lora + bim + unet
    assert {p for p in model.parameters() if p.requires_grad} == set(stage2.values())
    frozen = [model.vae, model.text_encoder, inner.model.vision_tower, inner.model.multi_modal_projector]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert not any(p.requires_grad for n, p in model.llava.named_parameters()
                   if "lora_" not in n and "trainable_tokens_delta" not in n)


def test_zero_initialised_bim_equals_plain_unet_path(model, batch):
    model.eval()
    enc = model.encode_instruction(batch["clip_pixels"], batch["input_ids"], batch["attention_mask"])
    f = model.qformer(enc["img_hidden"])
    context, spatial = model.condition(enc["img_hidden"], enc["patch_features"], (16, 16))
    assert spatial.shape == (3, 32, 16, 16)
    g = torch.Generator().manual_seed(0)
    z, cond = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        with_bim = model.predict_noise(z, t, cond, context, spatial)
        plain = model.predict_noise(z, t, cond, f, None)
    assert torch.equal(with_bim, plain)


def test_stage2_loss_masks_vqa_rows(model, batch):
    model.train()
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "lm_loss", "diffusion_loss"}
    assert torch.allclose(out["loss"], out["lm_loss"] + out["diffusion_loss"])
    # Same generator, VQA row removed: identical diffusion loss (averaged over edit rows, not the batch).
    edits = {k: v[[0, 2]] for k, v in batch.items()}
    out_edits = model(edits, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out["diffusion_loss"], out_edits["diffusion_loss"], atol=1e-6)
    # A VQA-only batch trains the LM only.
    vqa = {k: v[[1]] for k, v in batch.items()}
    out_vqa = model(vqa)
    assert out_vqa["diffusion_loss"] == 0 and out_vqa["lm_loss"] > 0
    out_vqa["loss"].backward()
    model.zero_grad(set_to_none=True)


def test_cfg_dropout_bands(model):
    ctx, cond = torch.randn(5, 77, 32), torch.randn(5, 4, 16, 16)
    r = torch.tensor([0.01, 0.07, 0.12, 0.5, 0.15])
    ctx2, cond2 = model.cfg_dropout(ctx, cond, r)
    null = model.null_text_embeds[0]
    assert [torch.equal(ctx2[i], null) for i in range(5)] == [True, True, False, False, False]
    assert [not cond2[i].any() for i in range(5)] == [False, True, True, False, False]
    assert torch.equal(ctx2[3], ctx[3]) and torch.equal(cond2[4], cond[4])


def test_training_applies_cfg_dropout_but_never_to_spatial(model, monkeypatch):
    seen = {}
    monkeypatch.setattr(model, "predict_noise", lambda z, t, c, ctx, sp: seen.update(sp=sp) or torch.zeros_like(z))
    monkeypatch.setattr(model, "cfg_dropout", lambda ctx, c, r: seen.update(r=r) or (ctx, c))
    edit = {"src_pixels": torch.zeros(2, 3, 32, 32), "tgt_pixels": torch.zeros(2, 3, 32, 32)}
    spatial = torch.randn(2, 32, 16, 16)
    model.train()
    model.diffusion_loss(edit, torch.randn(2, 77, 32), spatial)
    assert seen["r"].shape == (2,) and seen["sp"] is spatial
    seen.clear()
    model.eval()
    model.diffusion_loss(edit, torch.randn(2, 77, 32), spatial)
    assert "r" not in seen


def test_stage1_alignment_loss(model):
    proc = model.processor
    batch = proc.collate([proc.encode_caption("a red cup on a table"), proc.encode_caption("two dogs")])
    assert batch["clip_text_input_ids"].shape == (2, 77)
    out = model(batch, stage=1)
    target = model.clip_text_embeds(batch["clip_text_input_ids"])
    enc = model.encode_instruction(None, batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    expected = torch.nn.functional.mse_loss(model.qformer(enc["img_hidden"]), target)
    assert torch.allclose(out["align_loss"], expected, atol=1e-6)
    assert torch.allclose(out["loss"], out["lm_loss"] + out["align_loss"], atol=1e-6)


def test_loss_decreases_on_fixed_batch(batch):
    from model.smartedit import build_smartedit

    model = build_smartedit(tiny_config()).train()
    params = list(model.trainable_parameters().values())
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(4):
        out = model(batch, generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]
    # Every trainable group actually received gradient.
    for prefix in ("qformer.", "bim.", "unet."):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
                   if n.startswith(prefix)), prefix
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_trainable_state_dict_safetensors_roundtrip(tmp_path, batch):
    from safetensors.torch import load_file, save_file

    from model.smartedit import build_smartedit

    trained = build_smartedit(tiny_config())
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for p in trained.trainable_parameters().values():
            p.add_(torch.randn_like(p) * 0.02)
    sd = trained.trainable_state_dict()
    assert any("lora_A" in k for k in sd) and any("trainable_tokens_delta" in k for k in sd)
    assert any(k.startswith("bim.") and "gaussian" in k for k in sd)  # SAM's random PE buffer travels too
    assert not any(k.startswith(("vae.", "text_encoder.")) or "vision_tower" in k for k in sd)
    save_file(sd, str(tmp_path / "trainable.safetensors"))

    fresh = build_smartedit(tiny_config())
    trained.eval(), fresh.eval()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with torch.no_grad():
        a, before = trained(batch, generator=g()), fresh(batch, generator=g())
        assert not torch.allclose(a["loss"], before["loss"])
        fresh.load_trainable_state_dict(load_file(str(tmp_path / "trainable.safetensors")))
        after = fresh(batch, generator=g())
    assert torch.allclose(a["loss"], after["loss"], atol=1e-6)
    assert torch.allclose(a["diffusion_loss"], after["diffusion_loss"], atol=1e-6)
    with pytest.raises(KeyError, match="missing"):
        fresh.load_trainable_state_dict({k: v for k, v in sd.items() if not k.startswith("bim.")})


def test_listing_trainable_parameters_changes_nothing(model):
    model.set_trainable(1)
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(model.trainable_parameters()) == before
    assert {n for n, p in model.named_parameters() if p.requires_grad} == before  # no side effect
    assert not any(n.startswith(("bim.", "unet.")) for n in before)
    model.set_trainable(2)


def test_non_strict_load_reports_missing_and_unexpected_keys_and_loads_the_rest():
    from model.smartedit import build_smartedit

    a, b = build_smartedit(tiny_config(seed=1)), build_smartedit(tiny_config(seed=2))
    sd = a.trainable_state_dict()
    partial = {k: v for k, v in sd.items() if k.startswith("qformer.")}
    partial["qformer.no_such_tensor"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"unexpected \['qformer.no_such_tensor'\]"):
        b.load_trainable_state_dict(partial)  # strict: nothing loaded
    assert not torch.equal(b.qformer.queries, a.qformer.queries)
    keys = b.load_trainable_state_dict(partial, strict=False)
    assert keys.unexpected == ["qformer.no_such_tensor"]
    assert set(keys.missing) == set(sd) - set(partial) and any(k.startswith("bim.") for k in keys.missing)
    after = b.trainable_state_dict()
    assert all(torch.equal(after[k], sd[k]) for k in partial if k in sd)  # the shared keys were loaded
    assert not torch.equal(after["unet.conv_in.weight"], sd["unet.conv_in.weight"])  # the others kept theirs
