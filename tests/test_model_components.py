"""SmartEdit model components on tiny sizes: configs, QFormer, BIM, UNet hook, LLaVA [IMG] tokens, processor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import BIMConfig, LoRAConfig, QFormerConfig, SmartEditConfig, get_preset, tiny_config

torch.set_num_threads(1)


def _image(seed: int = 0, size: int = 32) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


# -- config --------------------------------------------------------------------------------------------------------
def test_presets_carry_paper_and_official_values():
    paper, official = get_preset("7b"), get_preset("7b-official")
    assert (paper.lora.r, paper.lora.alpha) == (16, 27)
    assert (official.lora.r, official.lora.alpha, official.lora.dropout) == (8, 16, 0.05)
    for cfg in (paper, get_preset("13b")):
        assert cfg.num_img_tokens == 32 and cfg.qformer.num_queries == 77 and cfg.qformer.num_layers == 6
        assert (cfg.bim.embedding_dim, cfg.bim.num_heads, cfg.bim.mlp_dim, cfg.bim.depth) == (1024, 8, 2048, 2)
        assert cfg.bim.variant == "bim" and cfg.loss.text_drop_below == 0.10 and cfg.loss.image_drop_range == (0.05, 0.15)
        assert (cfg.sampling.num_inference_steps, cfg.sampling.text_guidance_scale,
                cfg.sampling.image_guidance_scale) == (100, 7.5, 1.5)
    assert "language_model" in paper.lora.target_modules
    with pytest.raises(ValueError, match="unknown SmartEdit preset"):
        get_preset("70b")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="stage"):
        SmartEditConfig(stage=3)
    with pytest.raises(ValueError, match="num_heads"):
        QFormerConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="LoRAConfig.r"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match="image_drop_range"):
        SmartEditConfig(loss={"image_drop_range": (0.2, 0.1)})
    with pytest.raises(ValueError, match="unknown field"):
        SmartEditConfig.from_dict({"stagee": 1})


def test_config_json_roundtrip(tmp_path):
    cfg = tiny_config(bim=BIMConfig(variant="cross_attention", embedding_dim=32, num_heads=2, mlp_dim=64, depth=1))
    cfg.save(tmp_path / "c.json")
    assert SmartEditConfig.load(tmp_path / "c.json") == cfg


def test_missing_preset_directory_error_names_field(tmp_path):
    from model.smartedit import build_smartedit

    with pytest.raises(FileNotFoundError, match="field 'llava_dir' is not set.*LlavaForConditionalGeneration"):
        build_smartedit(get_preset("7b"))
    cfg = get_preset("13b", llava_dir=str(tmp_path), unet_dir=str(tmp_path / "nope"), vae_dir=str(tmp_path),
                     clip_text_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="field 'unet_dir' = .*nope.* is not a directory.*UNet2DConditionModel"):
        build_smartedit(cfg)


# -- QFormer / BIM / UNet ------------------------------------------------------------------------------------------
def test_qformer_shape_and_cross_attention_layers():
    from model.qformer import QFormer

    q = QFormer(QFormerConfig(num_layers=4, hidden_size=32, num_heads=4, intermediate_size=64), encoder_hidden_size=48)
    out = q(torch.randn(3, 32, 48))
    assert out.shape == (3, 77, 32)
    crossed = [i for i, layer in enumerate(q.qformer.encoder.layer) if layer.has_cross_attention]
    assert crossed == [0, 2]
    assert abs(float(q.queries.detach().std()) - 0.02) < 0.005


@pytest.mark.parametrize("variant", ["bim", "plain", "cross_attention"])
def test_bim_variants_shapes_and_zero_init(variant):
    from model.bim import BidirectionalInteractionModule

    cfg = BIMConfig(variant=variant, depth=1, embedding_dim=32, num_heads=2, mlp_dim=64)
    bim = BidirectionalInteractionModule(cfg, text_dim=24, vision_dim=32, unet_channels=16)
    f, v = torch.randn(2, 77, 24), torch.randn(2, 16, 32)
    f2, spatial = bim(f, v, (8, 8))
    assert f2.shape == (2, 77, 24)
    assert torch.equal(f2, f)  # zero-initialised output heads
    if variant == "bim":
        assert spatial.shape == (2, 16, 8, 8) and not spatial.any()
        with torch.no_grad():
            for p in bim.parameters():
                p.normal_(0, 0.1)
        f3, spatial3 = bim(f, v, (8, 8))
        assert not torch.equal(f3, f) and spatial3.abs().sum() > 0
    else:
        assert spatial is None


def test_bim_rejects_width_mismatch():
    from model.bim import BidirectionalInteractionModule

    with pytest.raises(ValueError, match="embedding_dim=32 must equal the CLIP vision width 40"):
        BidirectionalInteractionModule(BIMConfig(embedding_dim=32, num_heads=2), 24, 40, 16)


def test_widen_conv_in_and_spatial_injection_hook():
    from model.unet import SpatialInjection, build_tiny_unet, widen_conv_in

    unet4 = build_tiny_unet(cross_attention_dim=32)
    # A stock 4-channel UNet: build one by narrowing, then widen back and check the zero extra channels.
    torch.manual_seed(0)
    stock = type(unet4).from_config({**unet4.config, "in_channels": 4})
    x4, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    ref = stock(x4, 10, encoder_hidden_states=ctx).sample
    widened = widen_conv_in(stock)
    assert widened.conv_in.in_channels == 8 and widened.config.in_channels == 8
    out = widened(torch.cat([x4, torch.randn(1, 4, 16, 16)], 1), 10, encoder_hidden_states=ctx).sample
    assert torch.allclose(out, ref, atol=1e-6)

    inj = SpatialInjection(widened)
    x8 = torch.randn(1, 8, 16, 16)
    base = widened(x8, 10, encoder_hidden_states=ctx).sample
    extra = torch.randn(1, 32, 16, 16)
    with inj.active(extra):
        injected = widened(x8, 10, encoder_hidden_states=ctx).sample
    assert not torch.allclose(injected, base)
    assert torch.equal(widened(x8, 10, encoder_hidden_states=ctx).sample, base)  # inactive again after the block
    with inj.active(torch.zeros(1, 32, 8, 8)), pytest.raises(ValueError, match="do not match"):
        widened(x8, 10, encoder_hidden_states=ctx)


# -- LLaVA + processor ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from model.smartedit import build_smartedit

    return build_smartedit(tiny_config()).eval()


def test_processor_labels_edit_and_vqa(tiny_model):
    proc = tiny_model.processor
    batch = proc([_image(0), _image(1)], ["make the left cup red", "what is left?"], answers=[None, "a cup"],
                 targets=[_image(2), None])
    ids, labels, img = batch["input_ids"], batch["labels"], batch["img_token_mask"]
    assert img.sum(1).tolist() == [32, 32]
    assert batch["is_edit"].tolist() == [True, False]
    # Edit row: exactly the 32 [IMG] tokens are labelled; VQA row: the answer (+ eos) only, no [IMG].
    assert torch.equal(labels[0][labels[0] != -100], ids[0][img[0]])
    vqa_labelled = labels[1][labels[1] != -100]
    assert not img[1][labels[1] != -100].any()
    assert proc.tokenizer.decode(vqa_labelled, skip_special_tokens=True).strip() == "a cup"
    assert (ids[0] == proc.image_token_id).sum() == proc.num_image_placeholders == 16
    assert batch["src_pixels"].shape == (2, 3, 32, 32) and batch["clip_pixels"].shape == (2, 3, 32, 32)
    assert batch["src_pixels"].min() >= -1 and batch["src_pixels"].max() <= 1
    assert not batch["tgt_pixels"][1].any()  # VQA row has no target: zeros, masked out by is_edit
    # The [IMG] tokens are single tokens appended after the instruction.
    assert tiny_model.img_token_ids == list(range(tiny_model.img_token_ids[0], tiny_model.img_token_ids[0] + 32))


def test_encode_instruction_shapes_and_patch_features(tiny_model):
    batch = tiny_model.processor([_image(0), _image(1)], ["a", "bb"])
    out = tiny_model.encode_instruction(batch["clip_pixels"], batch["input_ids"], batch["attention_mask"],
                                        batch["img_token_mask"], batch["labels"])
    assert out["img_hidden"].shape == (2, 32, 64)
    assert out["patch_features"].shape == (2, 16, 32)
    assert out["lm_loss"].ndim == 0 and out["lm_loss"] > 0
    # Patch features are the vision tower's layer -2 without CLS (one tower pass feeds both consumers).
    from model.llava import base_llava, merged_state_dict

    tower = base_llava(tiny_model.llava).model.vision_tower
    ref = tower(batch["clip_pixels"], output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.allclose(out["patch_features"], ref)
    # The [IMG] hidden state is the post-norm last layer: equal to transformers' own LlavaModel output.
    inner = base_llava(tiny_model.llava)
    full = inner.model(input_ids=batch["input_ids"], pixel_values=batch["clip_pixels"],
                       attention_mask=batch["attention_mask"]).last_hidden_state
    ref_img = full[batch["img_token_mask"]].view(2, 32, -1)
    assert torch.allclose(out["img_hidden"], ref_img, atol=1e-5)


def test_lm_loss_matches_transformers_loss(tiny_model):
    batch = tiny_model.processor([_image(3)], ["turn it blue"])
    from model.llava import base_llava, merged_state_dict

    ours = tiny_model.encode_instruction(batch["clip_pixels"], batch["input_ids"], batch["attention_mask"],
                                         labels=batch["labels"])["lm_loss"]
    ref = base_llava(tiny_model.llava)(input_ids=batch["input_ids"], pixel_values=batch["clip_pixels"],
                                                  attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(ours, ref, atol=1e-5)


def test_lora_targets_language_model_only(tiny_model):
    names = [n for n, _ in tiny_model.llava.named_parameters() if "lora_A" in n]
    assert names and all("language_model" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "v_proj"}


def test_tiny_dataclass_replace_keeps_validation():
    with pytest.raises(ValueError):
        dataclasses.replace(tiny_config(), resolution=30)
