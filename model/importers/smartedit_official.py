"""``smartedit-official``: the released SmartEdit-7B/13B checkpoints ↔ a SmartEditPipeline folder.

Released layout (official ``train/DS_SmartEdit_train.py`` ``_save``; read back by ``test/DS_SmartEdit_test.py``)::

    SRC/adapter_config.json                                  peft LoRA config (r=8, alpha=16, q_proj/v_proj)
    SRC/LLM-<step>/adapter_model.bin                         model.base_model.model.* : LlamaModel weights, unmerged
                                                             LoRA (lora_A/B.default), 32035-row embed_tokens
    SRC/embeddings_qformer/checkpoint-<step>_embeddings_qformer.bin
                                                             lm_head.weight, mm_projector.{weight,bias} (one Linear),
                                                             sd_query_tokens (1, 77, 768), sd_qformer.* (LAVIS BERT)
    SRC/modulate-<step>/adapter_model.bin                    BIM: modulate_head, modulate_transformer.* (SAM
                                                             TwoWayTransformer), pe_layer.*, dimension_reduction_*
    SRC/unet-<step>/adapter_model.bin                        unet.* : diffusers UNet2DConditionModel, 8-channel conv_in

Not in the release, so taken from the base models the official code loads: the Vicuna-1.1 config and tokenizer
(``--vicuna``), CLIP ViT-L/14 at 224 px (``--clip-vision``), and an SD-1.5 / InstructPix2Pix diffusers folder
(``--sd``: unet/config.json, vae/, text_encoder/ + tokenizer/ for the null condition CLIP("")).

The pipeline folder keeps the LoRA unmerged in ``llava/lora/``  (peft layout; merged when the
pipeline loads), so ``export_checkpoint`` writes the official files back tensor for tensor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.importers.mapping import KeyMapping, MappingReport, load_weights, shapes_of
from model.llava import LORA_SUBDIR

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DESCRIPTION = "released SmartEdit-7B/13B (LLM-<step>/, embeddings_qformer/, modulate-<step>/, unet-<step>/)"

LLM_PREFIX = "model.base_model.model."
#: Added tokens in the official order (``setup_tokens_for_conversation``): ids base+0 … base+34 (32000–32034).
IMAGE_PATCH_TOKEN, IM_START, IM_END = "<img>", "<im_start>", "<im_end>"
NUM_IMG_TOKENS = 32
#: transformers' LLaVA module path of the language model inside LlavaForConditionalGeneration.
LM = "model.language_model."
#: BERT's max_position_embeddings: the length of the LAVIS ``embeddings.position_ids`` buffer.
BERT_POSITIONS = 512
# LAVIS BERT (official sd_qformer) ↔ transformers Blip2QFormerModel module names.
_QFORMER_RENAMES = ((".attention.self.", ".attention.attention."), (".crossattention.self.", ".crossattention.attention."))
# Official BIM names ↔ model.bim.BidirectionalInteractionModule names.
_BIM_RENAMES = {
    "modulate_head.": "text_in.",
    "dimension_reduction_head_qformer_out.": "text_out.",
    "dimension_reduction_head_zeroconv.": "image_out.",
    "modulate_transformer.": "transformer.",
    "pe_layer.": "position_embedding.",
}


# -- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vicuna", required=True, help="Vicuna-1.1 (LLaMA) HF folder: config.json + tokenizer files "
                        "(weights not needed: the release holds the full LLaMA weights)")
    parser.add_argument("--clip-vision", required=True, help="CLIP ViT-L/14 (224 px) folder: CLIPVisionModel weights "
                        "+ preprocessor_config.json")
    parser.add_argument("--sd", required=True, help="diffusers SD-1.5 or InstructPix2Pix folder (unet/config.json, "
                        "vae/, text_encoder/, tokenizer/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the only/highest one)")
    parser.add_argument("--qformer-heads", type=int, default=12, help="QFormer attention heads (BERT-base: 12)")
    parser.add_argument("--bim-heads", type=int, default=8, help="BIM TwoWayTransformer heads (official: 8)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--step", type=int, default=15000, help="step number in the file names (default 15000)")


# -- reading the release --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class OfficialFiles:
    """Paths of one step of a release."""

    llm: Path
    embeddings_qformer: Path
    modulate: Path
    unet: Path
    adapter_config: Path
    step: int

    @classmethod
    def find(cls, source: Path, step: int | None = None) -> OfficialFiles:
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: not a directory (expected the released SmartEdit folder)")
        steps = sorted(int(m.group(1)) for p in source.glob("LLM-*") if (m := re.fullmatch(r"LLM-(\d+)", p.name)))
        if not steps:
            raise FileNotFoundError(f"{source}: no LLM-<step>/ folder; is this a SmartEdit release folder?")
        step = steps[-1] if step is None else step
        files = cls(
            llm=source / f"LLM-{step}" / "adapter_model.bin",
            embeddings_qformer=source / "embeddings_qformer" / f"checkpoint-{step}_embeddings_qformer.bin",
            modulate=source / f"modulate-{step}" / "adapter_model.bin",
            unet=source / f"unet-{step}" / "adapter_model.bin",
            adapter_config=source / f"LLM-{step}" / "adapter_config.json",
            step=step,
        )
        if not files.adapter_config.is_file():
            files.adapter_config = source / "adapter_config.json"  # the official test copies it from the root
        for f in (files.llm, files.embeddings_qformer, files.modulate, files.unet, files.adapter_config):
            if not f.is_file():
                raise FileNotFoundError(f"{f}: missing from the release folder (step {step})")
        return files


def lora_scale(adapter_config: dict[str, Any]) -> tuple[int, float]:
    """(r, alpha) of a peft adapter_config.json."""
    return int(adapter_config["r"]), float(adapter_config["lora_alpha"])


# -- pure mappings (dict → dict; also run on meta tensors by the 7B/13B tests) ----------------------------------------
def map_llm(llm: dict[str, torch.Tensor], eq: dict[str, torch.Tensor], source_name: str,
            report: MappingReport | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """LLM file + the LLM part of embeddings_qformer → (LlavaForConditionalGeneration language-model keys + lm_head
    + projector, peft adapter keys). LoRA stays unmerged: (base, adapter)."""
    m = KeyMapping(llm, source_name)
    adapter: dict[str, torch.Tensor] = {}
    m.drop_matching(lambda k: k.endswith("rotary_emb.inv_freq"),
                    "RoPE frequencies: recomputed from the config by transformers")
    for key in m.keys_with_prefix(LLM_PREFIX):
        rest = key[len(LLM_PREFIX):]
        lora = re.fullmatch(r"(.*)\.(lora_[AB])\.default\.weight", rest)
        if lora:
            adapter[f"base_model.model.{LM}{lora.group(1)}.{lora.group(2)}.weight"] = m.take(key)
            m.mapped += 1
        else:
            m.move(key, LM + rest)
    base = m.finish(None, "llm", report)
    # The sd_* keys of this file belong to the QFormer (map_qformer).
    e = KeyMapping({k: v for k, v in eq.items() if not k.startswith("sd_")}, source_name.replace("LLM", "eq"))
    e.move("lm_head.weight", "lm_head.weight")
    e.move("mm_projector.weight", "model.multi_modal_projector.linear_1.weight")
    e.move("mm_projector.bias", "model.multi_modal_projector.linear_1.bias")
    if e.has(LLM_PREFIX + "embed_tokens.weight"):
        e.drop(LLM_PREFIX + "embed_tokens.weight", "duplicate of the LLM file's embed_tokens (the official loader "
               "drops it too)")
    base.update(e.finish(None, "llm-heads", report))
    return base, adapter


def map_qformer(eq: dict[str, torch.Tensor], source_name: str, report: MappingReport | None = None,
                expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """sd_query_tokens + LAVIS sd_qformer.* → model.qformer.QFormer keys (queries, qformer.* = Blip2QFormerModel)."""
    m = KeyMapping({k: v for k, v in eq.items() if k.startswith("sd_")}, source_name)
    m.move("sd_query_tokens", "queries")
    m.drop("sd_qformer.embeddings.position_ids", "BERT position ids buffer: the QFormer reads no token positions")
    m.drop_matching(lambda k: k.startswith("sd_qformer.pooler."), "BERT pooler: unused (last_hidden_state is read)")
    m.move("sd_qformer.embeddings.LayerNorm.weight", "qformer.layernorm.weight")
    m.move("sd_qformer.embeddings.LayerNorm.bias", "qformer.layernorm.bias")

    def rename(rest: str) -> str:
        for old, new in _QFORMER_RENAMES:
            rest = rest.replace(old, new)
        return rest

    m.move_prefix("sd_qformer.encoder.", "qformer.encoder.", lambda r: rename("." + r)[1:])
    return m.finish(expected, "qformer", report)


def map_bim(modulate: dict[str, torch.Tensor], source_name: str, report: MappingReport | None = None,
            expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Official BIM names → model.bim.BidirectionalInteractionModule names."""
    m = KeyMapping(modulate, source_name)
    for old, new in _BIM_RENAMES.items():
        m.move_prefix(old, new)
    return m.finish(expected, "bim", report)


def map_unet(unet: dict[str, torch.Tensor], source_name: str, report: MappingReport | None = None,
             expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """``unet.``-prefixed diffusers names → UNet2DConditionModel names."""
    m = KeyMapping(unet, source_name)
    m.move_prefix("unet.", "")
    return m.finish(expected, "unet", report)


# -- configs inferred from the tensors ------------------------------------------------------------------------------
def qformer_config(eq: dict[str, torch.Tensor], num_heads: int):
    """QFormerConfig and the encoder width from the official tensors."""
    from model.config import QFormerConfig

    queries = eq["sd_query_tokens"]
    layers = sorted({int(k.split(".")[3]) for k in eq if k.startswith("sd_qformer.encoder.layer.")})
    crossed = sorted({int(k.split(".")[3]) for k in eq if ".crossattention." in k})
    freq = crossed[1] - crossed[0] if len(crossed) > 1 else len(layers)
    if crossed[0] != 0 or crossed != list(range(0, len(layers), freq)):
        raise ValueError(f"QFormer cross-attention in layers {crossed}: Blip2QFormer supports every n-th from 0")
    inter = eq["sd_qformer.encoder.layer.0.intermediate_query.dense.weight"].shape[0]
    enc = eq["sd_qformer.encoder.layer.0.crossattention.self.key.weight"].shape[1]
    cfg = QFormerConfig(num_layers=len(layers), hidden_size=queries.shape[-1], num_heads=num_heads,
                        intermediate_size=inter, cross_attention_frequency=freq, num_queries=queries.shape[1])
    return cfg, enc


def bim_config(modulate: dict[str, torch.Tensor], num_heads: int):
    """BIMConfig and (text_dim, vision_dim, unet_channels) from the official tensors."""
    from model.config import BIMConfig

    head = modulate["modulate_head.weight"]
    dim, text_dim = head.shape
    depth = len({k.split(".")[2] for k in modulate if k.startswith("modulate_transformer.layers.")})
    internal = modulate["modulate_transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
    cfg = BIMConfig(variant="bim", depth=depth, embedding_dim=dim, num_heads=num_heads,
                    mlp_dim=modulate["modulate_transformer.layers.0.mlp.lin1.weight"].shape[0],
                    attention_downsample_rate=dim // internal)
    return cfg, (text_dim, dim, modulate["dimension_reduction_head_zeroconv.weight"].shape[0])


def llava_config(vicuna: Path, clip_vision: Path, vocab_size: int, image_token_id: int):
    """LlavaConfig of LLaVA-1.1: the Vicuna text config, CLIP-L/14 vision config, layer -2, patch tokens."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig.from_pretrained(vicuna)
    text.vocab_size = vocab_size
    vision = CLIPVisionConfig.from_pretrained(clip_vision)
    patches = (vision.image_size // vision.patch_size) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=patches,
                         projector_hidden_act="gelu", multimodal_projector_bias=True)
    config.mm_projector_type = "linear"
    return config


def meta_llava(config):
    """LlavaForConditionalGeneration with LLaVA-1.1's single-Linear projector, on the meta device (no memory)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from model.llava import use_projector

    with torch.device("meta"):
        return use_projector(LlavaForConditionalGeneration(config), "linear")


def official_tokenizer(vicuna: Path, vocab_rows: int):
    """Vicuna tokenizer + the official added tokens, ids checked against the checkpoint's rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vicuna)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # as the official code does
    base = len(tokenizer)
    tokenizer.add_tokens([IMAGE_PATCH_TOKEN], special_tokens=False)
    tokenizer.add_tokens([IM_START, IM_END], special_tokens=True)
    tokenizer.add_tokens([f"<img_{i}>" for i in range(NUM_IMG_TOKENS)], special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids([IMAGE_PATCH_TOKEN, IM_START, IM_END, "<img_0>", f"<img_{NUM_IMG_TOKENS - 1}>"])
    want = [base, base + 1, base + 2, base + 3, base + 2 + NUM_IMG_TOKENS]
    if ids != want or len(tokenizer) != vocab_rows:
        raise ValueError(f"--vicuna {vicuna}: tokenizer has {base} tokens, so the official added tokens get ids {ids} "
                         f"and {len(tokenizer)} rows, but the checkpoint has {vocab_rows} embedding rows; pass the "
                         f"Vicuna-1.1 tokenizer the weights were trained with")
    return tokenizer


# -- import ---------------------------------------------------------------------------------------------------------
def import_checkpoint(source: Path, out: Path, vicuna: str, clip_vision: str, sd: str, step: int | None = None,
                      qformer_heads: int = 12, bim_heads: int = 8) -> MappingReport:
    """Write a SmartEditPipeline folder (``SmartEditPipeline.from_pretrained(out)`` loads it) from a release."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPTextModel

    from model.bim import BidirectionalInteractionModule
    from model.config import PROMPT_TEMPLATES, SmartEditConfig
    from model.pipeline import CONFIG_NAME, NULL_EMBEDS_NAME, default_scheduler
    from model.qformer import QFormer

    vicuna_dir, clip_dir, sd_dir = Path(vicuna), Path(clip_vision), Path(sd)
    for flag, path in (("--vicuna", vicuna_dir), ("--clip-vision", clip_dir), ("--sd", sd_dir)):
        if not path.is_dir():
            raise FileNotFoundError(f"{flag} {path}: not a directory")
    files = OfficialFiles.find(source, step)
    report = MappingReport("smartedit-official")
    out.mkdir(parents=True, exist_ok=True)

    # LLaVA: LLaMA + LoRA from the LLM file, lm_head/projector from embeddings_qformer, CLIP tower from --clip-vision.
    llm = load_weights(files.llm)
    eq = load_weights(files.embeddings_qformer)
    base, adapter = map_llm(llm, eq, str(files.llm), report)
    del llm
    rows = base[LM + "embed_tokens.weight"].shape[0]
    tokenizer = official_tokenizer(vicuna_dir, rows)
    config = llava_config(vicuna_dir, clip_dir, rows, tokenizer.convert_tokens_to_ids(IMAGE_PATCH_TOKEN))
    llava = meta_llava(config)
    base.update(map_vision(_clip_vision_weights(clip_dir), str(clip_dir), report, shapes_of(llava)))
    _check(base, shapes_of(llava), "llava", str(files.llm))
    llava.load_state_dict(base, assign=True, strict=True)
    llava.config.dtype = base[LM + "embed_tokens.weight"].dtype
    llava_dir = out / "llava"
    llava.save_pretrained(llava_dir)
    del llava, base
    r, alpha = lora_scale(json.loads(files.adapter_config.read_text()))
    lora_modules = sorted({k.split(".")[-3] for k in adapter})
    lora_dir = llava_dir / LORA_SUBDIR
    LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
               target_modules=rf".*language_model.*\.({'|'.join(lora_modules)})").save_pretrained(lora_dir)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(lora_dir / "adapter_model.safetensors"))
    report.notes.append(f"LoRA r={r} alpha={alpha} on {lora_modules} kept unmerged in llava/lora/ (merged at load: "
                        f"W + {alpha / r:g}·B·A), {len(adapter)} tensors")
    tokenizer.save_pretrained(llava_dir)
    image_processor = CLIPImageProcessor.from_pretrained(clip_dir)
    image_processor.save_pretrained(llava_dir)

    # QFormer and BIM through our modules built on the meta device (strict names and shapes), then saved.
    qcfg, enc_width = qformer_config(eq, qformer_heads)
    with torch.device("meta"):
        qformer = QFormer(qcfg, enc_width)
    qformer.load_state_dict(map_qformer(eq, str(files.embeddings_qformer), report, shapes_of(qformer)), assign=True)
    qformer.save_pretrained(out / "qformer")
    modulate = load_weights(files.modulate)
    bcfg, (text_dim, vision_dim, unet_channels) = bim_config(modulate, bim_heads)
    if vision_dim != config.vision_config.hidden_size:
        raise ValueError(f"{files.modulate}: BIM width {vision_dim} != CLIP vision width "
                         f"{config.vision_config.hidden_size} of --clip-vision {clip_dir}")
    with torch.device("meta"):
        bim = BidirectionalInteractionModule(bcfg, text_dim, vision_dim, unet_channels)
    bim.load_state_dict(map_bim(modulate, str(files.modulate), report, shapes_of(bim)), assign=True)
    bim.save_pretrained(out / "bim")

    # UNet: the SD-1.5 config with 8 input channels (the official code widens conv_in the same way).
    unet_config = dict(UNet2DConditionModel.load_config(sd_dir / "unet"))
    unet_config["in_channels"] = 8
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    unet.load_state_dict(map_unet(load_weights(files.unet), str(files.unet), report, shapes_of(unet)), assign=True)
    unet.save_pretrained(out / "unet")
    del unet
    if (out / "vae").exists():
        shutil.rmtree(out / "vae")
    shutil.copytree(sd_dir / "vae", out / "vae")
    default_scheduler().save_pretrained(out / "scheduler")

    # Null condition: CLIP("") of the SD text encoder, as the InstructPix2Pix pipeline computes it.
    text_tokenizer = AutoTokenizer.from_pretrained(sd_dir / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd_dir / "text_encoder").eval()
    ids = text_tokenizer("", padding="max_length", max_length=text_tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")["input_ids"]
    with torch.no_grad():
        null = text_encoder(input_ids=ids).last_hidden_state.float()
    save_file({"null_text_embeds": null.contiguous()}, str(out / NULL_EMBEDS_NAME))

    dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    # Load in the dtype the release was saved in (the official inference runs fp32); the VAE follows it.
    llm_dtype = dtype_name.get(llava_config_dtype(llava_dir), "bfloat16")
    hidden = config.text_config.hidden_size
    cfg = SmartEditConfig(
        preset={4096: "7b-official", 5120: "13b-official"}.get(hidden, "smartedit-official"),
        llava_dir="llava", unet_dir="unet", vae_dir="vae", qformer_dir="qformer", bim_dir="bim",
        null_text_embeds_path=NULL_EMBEDS_NAME, num_img_tokens=NUM_IMG_TOKENS,
        prompt_template=PROMPT_TEMPLATES["smartedit-official"], projector="linear", lora=None,
        qformer=qcfg, bim=bcfg, llm_dtype=llm_dtype, vae_dtype=llm_dtype,
        gradient_checkpointing=False,
    )
    cfg.save(out / CONFIG_NAME)
    index = {"_class_name": "SmartEditPipeline", "llava": ["transformers", "LlavaForConditionalGeneration"],
             "qformer": ["model.qformer", "QFormer"], "bim": ["model.bim", "BidirectionalInteractionModule"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    report.notes.append(f"step {files.step}; tokenizer {len(tokenizer)} tokens ({IMAGE_PATCH_TOKEN} = image "
                        f"placeholder, <img_0..31> = [IMG]); prompt preset 'smartedit-official'")
    return report


def llava_config_dtype(llava_dir: Path):
    import torch

    dtype = json.loads((llava_dir / "config.json").read_text()).get("dtype", "float32")
    return getattr(torch, str(dtype).replace("torch.", ""), torch.float32)


def _clip_vision_weights(clip_dir: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (clip_dir / name).is_file():
            return load_weights(clip_dir / name)
    raise FileNotFoundError(f"--clip-vision {clip_dir}: no model.safetensors or pytorch_model.bin")


def map_vision(weights: dict[str, torch.Tensor], source_name: str, report: MappingReport | None,
               expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A CLIPModel (``vision_model.*`` + ``text_model.*``, as released by OpenAI) or CLIPVisionModel checkpoint →
    the LLaVA vision tower keys (``model.vision_tower.*``)."""
    m = KeyMapping(weights, source_name)
    m.drop_matching(lambda k: k.endswith("embeddings.position_ids"), "position ids buffer (older checkpoints): "
                    "recomputed by transformers")
    if any(k.startswith("vision_model.") for k in weights):
        m.move_prefix("vision_model.", "model.vision_tower.")
        m.drop_matching(lambda k: True, "CLIP text tower / projection heads: LLaVA reads the vision tower only")
    else:
        m.move_prefix("", "model.vision_tower.")
    return m.finish({k: v for k, v in expected.items() if k.startswith("model.vision_tower.")}, "vision_tower", report)


# transformers saves LLaVA under its older on-disk names and renames them when loading; do the same here.
_SAVED_LLAVA_PREFIXES = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                         ("vision_tower.", "model.vision_tower."),
                         ("multi_modal_projector.", "model.multi_modal_projector."))


def _runtime_llava_key(key: str) -> str:
    for old, new in _SAVED_LLAVA_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _check(target: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], component: str, source: str) -> None:
    m = KeyMapping({}, source)  # an empty source: finish() then checks only the target side
    m.target = target
    m.finish(expected, component)


# -- export ---------------------------------------------------------------------------------------------------------
def export_checkpoint(source: Path, out: Path, step: int = 15000) -> MappingReport:
    """Write an imported (or trained) SmartEditPipeline folder in the released layout under ``out``.

    An imported folder round-trips tensor for tensor. A trained pipeline has its LoRA merged: the LoRA tensors are
    then written as zeros (A = 0, B = 0), which the official loader merges to the same weights."""
    import torch
    from safetensors.torch import load_file

    from model.config import SmartEditConfig
    from model.pipeline import CONFIG_NAME

    cfg = SmartEditConfig.load(source / CONFIG_NAME)
    if cfg.projector != "linear":
        raise ValueError(f"{source}: projector {cfg.projector!r}; the official layout has one Linear mm_projector")
    report = MappingReport("smartedit-official", direction="export")
    llava_dir = source / "llava"
    llava = {}
    for f in sorted(llava_dir.glob("model*.safetensors")):
        llava.update({_runtime_llava_key(k): v for k, v in load_file(str(f)).items()})
    text_config = json.loads((llava_dir / "config.json").read_text())["text_config"]
    m = KeyMapping(llava, str(llava_dir))
    m.drop_matching(lambda k: k.startswith("model.vision_tower."), "CLIP tower: not in the release (loaded from CLIP)")
    llm: dict[str, torch.Tensor] = {}
    for key in m.keys_with_prefix(LM):
        llm[LLM_PREFIX + key[len(LM):]] = m.take(key)
        m.mapped += 1
    eq = {"lm_head.weight": m.take("lm_head.weight"),
          "mm_projector.weight": m.take("model.multi_modal_projector.linear_1.weight"),
          "mm_projector.bias": m.take("model.multi_modal_projector.linear_1.bias")}
    m.mapped += 3
    m.finish(None, "llava", report)
    adapter_path = llava_dir / LORA_SUBDIR / "adapter_model.safetensors"
    layers = text_config["num_hidden_layers"]
    hidden = text_config["hidden_size"]
    head_dim = text_config.get("head_dim") or hidden // text_config["num_attention_heads"]
    theta = (text_config.get("rope_parameters") or {}).get("rope_theta") or text_config.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if adapter_path.is_file():
        adapter_cfg = json.loads((llava_dir / LORA_SUBDIR / "adapter_config.json").read_text())
        for key, value in load_file(str(adapter_path)).items():
            mod = re.fullmatch(rf"base_model\.model\.{re.escape(LM)}(.*)\.(lora_[AB])\.weight", key)
            if not mod:
                raise ValueError(f"{adapter_path}: unexpected adapter key {key}")
            llm[f"{LLM_PREFIX}{mod.group(1)}.{mod.group(2)}.default.weight"] = value
        r, alpha = int(adapter_cfg["r"]), adapter_cfg["lora_alpha"]
    else:
        r, alpha = 8, 16
        for i in range(layers):
            for proj in ("q_proj", "v_proj"):
                w = llm[f"{LLM_PREFIX}layers.{i}.self_attn.{proj}.weight"]
                llm[f"{LLM_PREFIX}layers.{i}.self_attn.{proj}.lora_A.default.weight"] = w.new_zeros(r, w.shape[1])
                llm[f"{LLM_PREFIX}layers.{i}.self_attn.{proj}.lora_B.default.weight"] = w.new_zeros(w.shape[0], r)
        report.notes.append("pipeline has its LoRA merged: exported zero LoRA tensors")
    for i in range(layers):
        llm[f"{LLM_PREFIX}layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    q = KeyMapping(load_file(str(source / "qformer" / "model.safetensors")), str(source / "qformer"))
    q.move("queries", "sd_query_tokens")
    q.move("qformer.layernorm.weight", "sd_qformer.embeddings.LayerNorm.weight")
    q.move("qformer.layernorm.bias", "sd_qformer.embeddings.LayerNorm.bias")

    def unrename(rest: str) -> str:
        for old, new in _QFORMER_RENAMES:
            rest = rest.replace(new, old)
        return rest

    q.move_prefix("qformer.encoder.", "sd_qformer.encoder.", lambda r_: unrename("." + r_)[1:])
    eq.update(q.finish(None, "qformer", report))
    eq["sd_qformer.embeddings.position_ids"] = torch.arange(BERT_POSITIONS).unsqueeze(0)
    from model.bim import WEIGHTS_NAME as BIM_WEIGHTS

    b = KeyMapping(load_file(str(source / "bim" / BIM_WEIGHTS)), str(source / "bim"))
    for old, new in _BIM_RENAMES.items():
        b.move_prefix(new, old)
    modulate = b.finish(None, "bim", report)
    u = KeyMapping(load_file(str(source / "unet" / "diffusion_pytorch_model.safetensors")), str(source / "unet"))
    u.move_prefix("", "unet.")
    unet = u.finish(None, "unet", report)

    for sub in (f"LLM-{step}", "embeddings_qformer", f"modulate-{step}", f"unet-{step}"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.save(llm, out / f"LLM-{step}" / "adapter_model.bin")
    torch.save(eq, out / "embeddings_qformer" / f"checkpoint-{step}_embeddings_qformer.bin")
    torch.save(modulate, out / f"modulate-{step}" / "adapter_model.bin")
    torch.save(unet, out / f"unet-{step}" / "adapter_model.bin")
    peft_cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.05,
                "target_modules": ["q_proj", "v_proj"], "bias": "none", "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=2) + "\n")
    return report
