"""Official SmartEdit release fixtures: the released key names (official ``train/DS_SmartEdit_train.py`` ``_save``)
at any width — tiny random tensors written to disk for the import tests, or full 7B/13B sizes on the meta device.

    python -m tests.official_fixtures OUT      # writes OUT/release (LLM-15000/, …) + OUT/vicuna, clip-vision, sd

Test helper only: nothing in the product imports it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

STEP = 15000
NEW_TOKENS = 35  # <img>, <im_start>, <im_end>, <img_0..31>


@dataclasses.dataclass
class Widths:
    """Sizes of one release. ``tiny`` for disk fixtures; ``seven_b``/``thirteen_b`` as released."""

    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_intermediate: int
    base_vocab: int
    clip_width: int = 1024
    qformer_hidden: int = 768
    qformer_layers: int = 6
    qformer_intermediate: int = 3072
    num_queries: int = 77
    bim_mlp: int = 2048
    bim_depth: int = 2
    unet_channels: int = 320

    @property
    def rows(self) -> int:
        return self.base_vocab + NEW_TOKENS


TINY = Widths(llm_hidden=64, llm_layers=2, llm_heads=4, llm_intermediate=128, base_vocab=261, clip_width=32,
              qformer_hidden=48, qformer_layers=4, qformer_intermediate=64, bim_mlp=64, unet_channels=32)
SEVEN_B = Widths(llm_hidden=4096, llm_layers=32, llm_heads=32, llm_intermediate=11008, base_vocab=32000)
THIRTEEN_B = Widths(llm_hidden=5120, llm_layers=40, llm_heads=40, llm_intermediate=13824, base_vocab=32000)


def llama_config(w: Widths):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=w.llm_hidden, intermediate_size=w.llm_intermediate, num_hidden_layers=w.llm_layers,
                       num_attention_heads=w.llm_heads, num_key_value_heads=w.llm_heads, vocab_size=w.base_vocab,
                       max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)


def sd15_unet_config(w: Widths) -> dict:
    """SD-1.5's UNet config (full size) or the tiny 2-level one, 8 input channels."""
    if w is TINY:
        return dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=8, out_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=w.qformer_hidden,
                    attention_head_dim=8, norm_num_groups=32)
    return dict(sample_size=64, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def _rand(shape, g: torch.Generator | None, device, scale=0.05):
    if device == "meta":
        return torch.empty(shape, device="meta")
    return torch.randn(shape, generator=g) * scale


def _norm(shape, g, device):
    return _rand(shape, g, device) * 0.2 + (1.0 if device != "meta" else 0.0)


def official_state_dicts(w: Widths, seed: int = 0, device: str = "cpu", lora_r: int = 8) -> dict[str, dict]:
    """The four released files' state dicts with the official names. Every tensor is random (including the
    zero-initialised heads and LoRA B, so that each part changes the result)."""
    from diffusers import UNet2DConditionModel
    from segment_anything.modeling import TwoWayTransformer
    from transformers import LlamaModel

    g = torch.Generator().manual_seed(seed)
    ctx = torch.device("meta") if device == "meta" else torch.device("cpu")
    cfg = llama_config(w)
    cfg.vocab_size = w.rows
    with ctx:
        torch.manual_seed(seed)
        llama = LlamaModel(cfg)
    llm = {}
    for key, value in llama.state_dict().items():
        llm["model.base_model.model." + key] = value
        if key.endswith(("q_proj.weight", "v_proj.weight")):
            stem = "model.base_model.model." + key.removesuffix(".weight")
            llm[stem + ".lora_A.default.weight"] = _rand((lora_r, value.shape[1]), g, device)
            llm[stem + ".lora_B.default.weight"] = _rand((value.shape[0], lora_r), g, device)
    head_dim = w.llm_hidden // w.llm_heads
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    for i in range(w.llm_layers):
        llm[f"model.base_model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = (
            torch.empty(head_dim // 2, device="meta") if device == "meta" else inv.clone())
    del llama

    h, enc = w.qformer_hidden, w.llm_hidden
    eq = {"lm_head.weight": _rand((w.rows, w.llm_hidden), g, device),
          "mm_projector.weight": _rand((w.llm_hidden, w.clip_width), g, device),
          "mm_projector.bias": _rand((w.llm_hidden,), g, device),
          "model.base_model.model.embed_tokens.weight": llm["model.base_model.model.embed_tokens.weight"].clone(),
          "sd_query_tokens": _rand((1, w.num_queries, h), g, device, 0.5),
          "sd_qformer.embeddings.LayerNorm.weight": _norm((h,), g, device),
          "sd_qformer.embeddings.LayerNorm.bias": _rand((h,), g, device),
          "sd_qformer.embeddings.position_ids": (torch.empty((1, 512), dtype=torch.int64, device="meta")
                                                 if device == "meta" else torch.arange(512).unsqueeze(0))}
    for i in range(w.qformer_layers):
        p = f"sd_qformer.encoder.layer.{i}."
        blocks = [("attention", h)] + ([("crossattention", enc)] if i % 2 == 0 else [])
        for block, kv in blocks:
            eq[p + f"{block}.self.query.weight"] = _rand((h, h), g, device, 0.3)
            eq[p + f"{block}.self.key.weight"] = _rand((h, kv), g, device, 0.3)
            eq[p + f"{block}.self.value.weight"] = _rand((h, kv), g, device, 0.3)
            for proj in ("query", "key", "value"):
                eq[p + f"{block}.self.{proj}.bias"] = _rand((h,), g, device)
            eq[p + f"{block}.output.dense.weight"] = _rand((h, h), g, device, 0.3)
            eq[p + f"{block}.output.dense.bias"] = _rand((h,), g, device)
            eq[p + f"{block}.output.LayerNorm.weight"] = _norm((h,), g, device)
            eq[p + f"{block}.output.LayerNorm.bias"] = _rand((h,), g, device)
        eq[p + "intermediate_query.dense.weight"] = _rand((w.qformer_intermediate, h), g, device, 0.3)
        eq[p + "intermediate_query.dense.bias"] = _rand((w.qformer_intermediate,), g, device)
        eq[p + "output_query.dense.weight"] = _rand((h, w.qformer_intermediate), g, device, 0.3)
        eq[p + "output_query.dense.bias"] = _rand((h,), g, device)
        eq[p + "output_query.LayerNorm.weight"] = _norm((h,), g, device)
        eq[p + "output_query.LayerNorm.bias"] = _rand((h,), g, device)

    d = w.clip_width
    with ctx:
        torch.manual_seed(seed + 1)
        two_way = TwoWayTransformer(depth=w.bim_depth, embedding_dim=d, num_heads=8, mlp_dim=w.bim_mlp)
    modulate = {"modulate_head.weight": _rand((d, h), g, device, 0.3), "modulate_head.bias": _rand((d,), g, device),
                "pe_layer.positional_encoding_gaussian_matrix": _rand((2, d // 2), g, device, 1.0),
                "dimension_reduction_head_zeroconv.weight": _rand((w.unet_channels, d, 1, 1), g, device, 0.3),
                "dimension_reduction_head_zeroconv.bias": _rand((w.unet_channels,), g, device),
                "dimension_reduction_head_qformer_out.weight": _rand((h, d), g, device, 0.3),
                "dimension_reduction_head_qformer_out.bias": _rand((h,), g, device)}
    modulate.update({"modulate_transformer." + k: v for k, v in two_way.state_dict().items()})

    with ctx:
        torch.manual_seed(seed + 2)
        unet = UNet2DConditionModel(**sd15_unet_config(w))
    unet_sd = {"unet." + k: v for k, v in unet.state_dict().items()}
    if device != "meta":
        unet_sd["unet.conv_in.weight"] = unet_sd["unet.conv_in.weight"] + _rand(unet_sd["unet.conv_in.weight"].shape,
                                                                                 g, device)
    return {"llm": llm, "embeddings_qformer": eq, "modulate": modulate, "unet": unet_sd}


ADAPTER_CONFIG = {"base_model_name_or_path": None, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
                  "init_lora_weights": True, "lora_alpha": 16, "lora_dropout": 0.05, "modules_to_save": None,
                  "peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}


def write_release(root: Path, state: dict[str, dict], step: int = STEP) -> Path:
    """The official folder layout with ``torch.save`` files, as the official ``_save`` writes them."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in (f"LLM-{step}", "embeddings_qformer", f"modulate-{step}", f"unet-{step}"):
        (root / sub).mkdir(exist_ok=True)
    torch.save(state["llm"], root / f"LLM-{step}" / "adapter_model.bin")
    torch.save(state["embeddings_qformer"], root / "embeddings_qformer" / f"checkpoint-{step}_embeddings_qformer.bin")
    torch.save(state["modulate"], root / f"modulate-{step}" / "adapter_model.bin")
    torch.save(state["unet"], root / f"unet-{step}" / "adapter_model.bin")
    (root / "adapter_config.json").write_text(json.dumps(ADAPTER_CONFIG, indent=2))
    return root


def _base_tokenizer(size: int):
    """The tiny byte-level tokenizer, padded with unreachable filler tokens to ``size`` entries (LLaMA: 32000)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from model.llava import TINY_SPECIALS, build_tiny_tokenizer

    if size == TINY.base_vocab:
        return build_tiny_tokenizer()
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    while len(vocab) < size:
        vocab[f"<filler_{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=2048)


def write_official(root: str | Path, w: Widths = TINY, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """A release at widths ``w`` (random weights, stored in ``dtype``) + the base folders the official code loads
    (Vicuna config/tokenizer, CLIP vision, SD unet config / VAE / text encoder)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from model.llava import build_tiny_tokenizer
    from model.tiny import build_tiny_text_encoder
    from model.unet import build_tiny_vae

    root = Path(root)
    tiny = w is TINY
    tokenizer = _base_tokenizer(w.base_vocab)
    assert len(tokenizer) == w.base_vocab, len(tokenizer)
    vicuna = root / "vicuna"
    llama_config(w).save_pretrained(vicuna)
    tokenizer.save_pretrained(vicuna)
    clip = root / "clip-vision"
    torch.manual_seed(seed + 5)
    if tiny:
        vision = CLIPVisionConfig(hidden_size=w.clip_width, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32)
    else:  # CLIP ViT-L/14 at 224 px
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768)
    CLIPVisionModel(vision).save_pretrained(clip)
    side = vision.image_size
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(clip)
    sd = root / "sd"
    UNet2DConditionModel.from_config(sd15_unet_config(w)).save_config(sd / "unet")
    if tiny:
        build_tiny_vae(seed + 3).save_pretrained(sd / "vae")
        text_encoder, text_tokenizer = build_tiny_text_encoder(w.qformer_hidden, seed + 4)
    else:  # SD-1.5's VAE and CLIP-L/14 text encoder shapes (the tokenizer is the byte-level stand-in)
        AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                      sample_size=512).save_pretrained(sd / "vae")
        text_tokenizer = build_tiny_tokenizer(clip_style=True)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, vocab_size=49408,
                                                    max_position_embeddings=77, bos_token_id=1, eos_token_id=2,
                                                    pad_token_id=3, projection_dim=768))
    text_encoder.save_pretrained(sd / "text_encoder")
    text_tokenizer.save_pretrained(sd / "tokenizer")
    state = official_state_dicts(w, seed)
    if dtype != torch.float32:
        state = {name: {k: v.to(dtype) if v.is_floating_point() and "inv_freq" not in k else v for k, v in part.items()}
                 for name, part in state.items()}
    release = write_release(root / "release", state)
    return {"release": release, "vicuna": vicuna, "clip_vision": clip, "sd": sd}


def write_tiny_official(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Tiny release + base folders (see ``write_official``)."""
    return write_official(root, TINY, seed)


if __name__ == "__main__":
    paths = write_tiny_official(sys.argv[1] if len(sys.argv) > 1 else "official-fixture")
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))


# -- LDM (CompVis / InstructPix2Pix / InstructDiffusion .ckpt) names ----------------------------------------------------
_LDM_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
               ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_LDM_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def diffusers_to_ldm_unet(state: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel names → LDM ``model.diffusion_model.*`` names (the inverse of diffusers'
    single-file conversion, written from the LDM layout: input_blocks 3 per level, output_blocks 3 per level,
    middle_block res/attn/res)."""
    levels = len(config["block_out_channels"])
    per = config["layers_per_block"]
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    prefixes: list[tuple[str, str]] = []
    for i in range(levels):
        for j in range(per):
            prefixes += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0."),
                         (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1.")]
        if i < levels - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
        for j in range(per + 1):
            prefixes += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."),
                         (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1.")]
        if i < levels - 1:
            prefixes.append((f"up_blocks.{i}.upsamplers.0.",
                             f"output_blocks.{(per + 1) * i + per}.{2 if up_has_attn[i] else 1}."))
    prefixes += [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
                 ("mid_block.resnets.1.", "middle_block.2.")]
    out = {}
    for key, value in state.items():
        new = None
        for hf, sd in _LDM_TOP.items():
            if key.startswith(hf + "."):
                new = sd + key[len(hf):]
        for hf, sd in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf:
                    for a, b in _LDM_RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                new = sd + rest
        assert new is not None, key
        out["model.diffusion_model." + new] = value
    return out
