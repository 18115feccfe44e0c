"""Importing the paper's base models: an LDM / InstructPix2Pix ``.ckpt`` UNet through diffusers' single-file loader,
and an original-repo LLaVA-1.1 checkpoint (single-Linear projector) into a transformers LLaVA folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.official_fixtures import TINY, diffusers_to_ldm_unet, llama_config, sd15_unet_config

torch.set_num_threads(1)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_ldm_checkpoint_becomes_the_same_8_channel_unet(tmp_path, suffix):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from model.importers import import_checkpoint

    config = sd15_unet_config(TINY)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    ldm = diffusers_to_ldm_unet(unet.state_dict(), config)
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2)  # VAE and schedule buffers ride along in .ckpt
    ldm["betas"] = torch.zeros(3)
    path = tmp_path / f"ip2p{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": ldm, "global_step": 1}, path)
    else:
        save_file(ldm, str(path))
    (tmp_path / "sd15_unet").mkdir()
    config4 = dict(UNet2DConditionModel.load_config(_saved_config(unet, tmp_path)), in_channels=4)
    (tmp_path / "sd15_unet" / "config.json").write_text(json.dumps(config4))  # a stock 4-channel SD-1.5 config
    report = import_checkpoint("instructdiffusion-ldm", path, tmp_path / "unet", unet_config=str(tmp_path / "sd15_unet"))
    assert set(report.components["unet"]["dropped"]) == {"betas", "first_stage_model.decoder.conv_in.weight"}
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert loaded.config.in_channels == 8
    a, b = unet.state_dict(), loaded.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_ldm_ema_weights_on_request(tmp_path):
    from diffusers import UNet2DConditionModel

    from model.importers import import_checkpoint
    from model.importers.ldm_unet import ema_key

    config = sd15_unet_config(TINY)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    ldm = diffusers_to_ldm_unet(unet.state_dict(), config)
    ldm.update({ema_key(k): v + 1 for k, v in list(ldm.items())})  # EMA copies differ by +1
    torch.save({"state_dict": ldm}, tmp_path / "ip2p.ckpt")
    cfg_dir = _saved_config(unet, tmp_path)
    import_checkpoint("instructdiffusion-ldm", tmp_path / "ip2p.ckpt", tmp_path / "ema", unet_config=str(cfg_dir),
                      ema=True)
    import_checkpoint("instructdiffusion-ldm", tmp_path / "ip2p.ckpt", tmp_path / "raw", unet_config=str(cfg_dir))
    ema = UNet2DConditionModel.from_pretrained(tmp_path / "ema").state_dict()
    raw = UNet2DConditionModel.from_pretrained(tmp_path / "raw").state_dict()
    for key, value in unet.state_dict().items():
        assert torch.equal(raw[key], value) and torch.equal(ema[key], value + 1), key


def _saved_config(unet, tmp_path):
    unet.save_config(tmp_path / "diffusers_cfg")
    return tmp_path / "diffusers_cfg"


def test_ldm_without_unet_keys_is_rejected(tmp_path):
    from model.importers import import_checkpoint

    torch.save({"state_dict": {"cond_stage_model.x": torch.zeros(1)}}, tmp_path / "clip.ckpt")
    with pytest.raises(ValueError, match=r"clip.ckpt: no 'model.diffusion_model.\*' keys"):
        import_checkpoint("instructdiffusion-ldm", tmp_path / "clip.ckpt", tmp_path / "out", unet_config=str(tmp_path))


def test_llava_original_gets_the_single_linear_projector(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

    from model.importers import import_checkpoint
    from model.llava import build_tiny_tokenizer, encode_image, load_llava

    # An original-repo LLaVA-1.1 folder: LlavaLlamaForCausalLM names, mm_* config fields, <im_patch>/<im_start>/<im_end>.
    src = tmp_path / "LLaVA-7B-v1"
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<im_patch>", "<im_start>", "<im_end>"], special_tokens=True)
    cfg = llama_config(TINY)
    cfg.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(cfg)
    state = dict(llm.state_dict())
    state["model.mm_projector.weight"] = torch.randn(cfg.hidden_size, 32) * 0.1
    state["model.mm_projector.bias"] = torch.randn(cfg.hidden_size) * 0.1
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    src.mkdir()
    torch.save(state, src / "pytorch_model-00001-of-00001.bin")
    raw = cfg.to_dict()
    raw.update(model_type="llava", architectures=["LlavaLlamaForCausalLM"], mm_vision_tower="openai/clip-vit-large-patch14",
               mm_vision_select_layer=-2, mm_hidden_size=32, mm_use_im_start_end=True)
    (src / "config.json").write_text(json.dumps(raw))
    tokenizer.save_pretrained(src)
    clip = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                     image_size=32, patch_size=8)).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)

    report = import_checkpoint("llava-original", src, tmp_path / "llava", clip_vision=str(clip))
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" in report.components["llava"]["dropped"]
    llava = load_llava(str(tmp_path / "llava"), torch.float32, "linear")
    projector = llava.model.multi_modal_projector
    assert not hasattr(projector, "linear_2")
    assert torch.equal(projector.linear_1.weight, state["model.mm_projector.weight"])
    assert torch.equal(llava.lm_head.weight, state["lm_head.weight"])
    assert torch.equal(llava.model.language_model.layers[1].mlp.down_proj.weight,
                       state["model.layers.1.mlp.down_proj.weight"])
    # Image tokens = one Linear over CLIP's layer -2 patch tokens (LLaVA-1.1), computed independently.
    pixels = torch.randn(1, 3, 32, 32)
    patches, tokens = encode_image(llava, pixels)
    tower = CLIPVisionModel.from_pretrained(clip)
    want = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(patches, want)
    torch.testing.assert_close(tokens, F.linear(want, state["model.mm_projector.weight"], state["model.mm_projector.bias"]))
    assert llava.config.image_token_id == tokenizer.convert_tokens_to_ids("<im_patch>")
    with pytest.raises(ValueError, match="mm_projector_type='linear'.*projector='mlp2x_gelu'"):
        load_llava(str(tmp_path / "llava"), torch.float32, "mlp2x_gelu")
