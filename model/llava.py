"""LLaVA with the 32 [IMG] tokens (GILL-style): the multimodal LLM half of SmartEdit.

Wraps ``transformers.LlavaForConditionalGeneration``. The instruction is followed by ``<img_0>…<img_{r-1}>``; the
last layer's hidden states (after the final norm) at those positions, shape (B, r, D_llm), condition the QFormer.
The CE loss is taken only where ``labels != -100`` (the [IMG] tokens for edits, answer tokens for VQA).

Training the new rows: peft's ``trainable_token_indices={"embed_tokens": ids, "lm_head": ids}`` keeps a small
trainable delta for exactly those rows next to the frozen matrices, so the 32k original rows can never drift (the
official code copies them back after each step instead) and the adapter saves/merges with peft's own code. lm_head
must be listed too, otherwise the reloaded adapter differs (checked with peft 0.21 on the tiny
model: without lm_head the reloaded lm_head rows differ).

The CLIP patch features v = E(x) that BIM needs come out of the same vision-tower pass that feeds the projector
(``encode_image``), so there is a single CLIP-ViT in memory and a single pass per image.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from model.config import SmartEditConfig

logger = logging.getLogger(__name__)

TINY_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def build_tiny_tokenizer(model_max_length: int = 512, clip_style: bool = False):
    """Offline byte-level tokenizer (256 byte symbols, no merges) for tiny models; no download, no training.

    ``clip_style`` adds CLIP's ``<s> … </s>`` wrapping and a 77-token maximum (tiny stand-in for CLIPTokenizer).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if clip_style:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<image>"],
        model_max_length=77 if clip_style else model_max_length,
    )


def build_tiny_llava(seed: int = 0):
    """Tiny random LLaVA: CLIP vision 32 wide (32 px, patch 8 → 4×4 grid) + Llama 64 wide, 2 layers.

    Returns (LlavaForConditionalGeneration, tokenizer, CLIPImageProcessor); the tokenizer has ``<image>``.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tokenizer = build_tiny_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=len(tokenizer), tie_word_embeddings=False, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
    )
    return model, tokenizer, image_processor


def num_image_placeholders(llava_config) -> int:
    """Placeholder tokens per image: patches on the grid (+1 for the CLS token with strategy 'full')."""
    vc = llava_config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n + (1 if llava_config.vision_feature_select_strategy == "full" else 0)


def add_img_tokens(tokenizer, config: SmartEditConfig) -> list[int]:
    """Add ``<img_0>…`` as special tokens (no-op if present, e.g. a saved SmartEdit dir); return their ids."""
    tokens = config.img_tokens()
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing and len(missing) != len(tokens):
        raise ValueError(f"tokenizer has only some of the [IMG] tokens (missing {missing[:3]}…); use a clean tokenizer")
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError(f"[IMG] token ids are not contiguous: {ids[:4]}…")
    return ids


# Plain functions over a (peft-wrapped) LlavaForConditionalGeneration, not a wrapper module: the module tree stays
# exactly peft's/transformers' so checkpoint keys stay standard.
def base_llava(llava: nn.Module) -> nn.Module:
    """The LlavaForConditionalGeneration under an optional PeftModel wrapper."""
    from peft import PeftModel

    return llava.get_base_model() if isinstance(llava, PeftModel) else llava


def encode_image(llava: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-ViT features of one pass: (patch features v (B, N, D_vision) from ``vision_feature_layer``,
    projected tokens (B, N, D_llm) for the LLM). N = 256 for ViT-L/14 at 224 px."""
    m = base_llava(llava)
    cfg = m.config
    tower = m.model.vision_tower
    dtype = next(tower.parameters()).dtype
    out = tower(pixel_values.to(dtype), output_hidden_states=True)
    feats = out.hidden_states[cfg.vision_feature_layer]
    patches = feats[:, 1:]
    selected = patches if cfg.vision_feature_select_strategy == "default" else feats
    return patches, m.model.multi_modal_projector(selected)


def forward_with_img_tokens(
    llava: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    img_token_mask: torch.Tensor,
    num_img_tokens: int,
    image_tokens: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Run the LLM on the prompt with teacher-forced [IMG] tokens.

    input_ids, attention_mask, img_token_mask, labels: (B, L); image_tokens: projected image tokens (B, N, D_llm)
    scattered into the ``<image>`` placeholder positions (None for text-only stage-1 captions).
    Returns dict(img_hidden (B, r, D_llm) last layer after the final norm, lm_loss (scalar; 0 if no labels)).
    """
    import torch
    import torch.nn.functional as F

    m = base_llava(llava)
    embeds = m.model.get_input_embeddings()(input_ids)
    if image_tokens is not None:
        placeholder = input_ids == m.config.image_token_id
        if int(placeholder.sum()) != image_tokens.shape[0] * image_tokens.shape[1]:
            raise ValueError(
                f"input_ids hold {int(placeholder.sum())} <image> placeholders but the image gives "
                f"{image_tokens.shape[0]}×{image_tokens.shape[1]}; build the prompt with SmartEditProcessor"
            )
        embeds = embeds.masked_scatter(placeholder.unsqueeze(-1), image_tokens.to(embeds.dtype))
    hidden = m.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
    counts = img_token_mask.sum(dim=1)
    if not bool((counts == num_img_tokens).all()):
        raise ValueError(f"every sample needs exactly {num_img_tokens} [IMG] tokens; got counts {counts.tolist()}")
    img_hidden = hidden[img_token_mask].view(hidden.shape[0], num_img_tokens, hidden.shape[-1])
    lm_loss = hidden.new_zeros((), dtype=torch.float32)
    if labels is not None:
        # Next-token CE on labelled positions only: gathering them first avoids B×L×V logits.
        targets = labels[:, 1:]
        keep = targets != -100
        if bool(keep.any()):
            logits = m.lm_head(hidden[:, :-1][keep]).float()
            lm_loss = F.cross_entropy(logits, targets[keep])
        else:
            lm_loss = hidden.sum().float() * 0.0
    return {"img_hidden": img_hidden, "lm_loss": lm_loss}


def merged_state_dict(llava: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the plain LlavaForConditionalGeneration with LoRA and the trained token rows merged in,
    computed out of place (the live model keeps training). Keys are the standard transformers keys."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    if not isinstance(llava, PeftModel):
        return {k: v.detach().contiguous() for k, v in llava.state_dict().items()}
    base = llava.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    handled: set[str] = set()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            w = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    w = w + module.get_delta_weight(adapter).to(w.dtype)
            merged[f"{name}.weight"] = w
            handled.add(f"{name}.base_layer.weight")
        elif isinstance(module, TrainableTokensLayer):
            owner = name.removesuffix(".token_adapter")
            merged[f"{owner}.weight"] = module.get_merged_weights(module.active_adapters).detach()
            handled.add(f"{name}.base_layer.weight")
    for key, value in base.state_dict().items():
        if key in handled or "lora_" in key or "trainable_tokens_delta" in key or "original_module" in key:
            continue
        clean = key.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")
        merged.setdefault(clean, value.detach())
    return {k: v.contiguous() for k, v in merged.items()}


def wrap_with_lora(llava: nn.Module, config: SmartEditConfig, img_token_ids: list[int]) -> nn.Module:
    """peft LoRA on the language model's q_proj/v_proj plus trainable [IMG] rows in embed_tokens and lm_head."""
    from peft import LoraConfig, get_peft_model

    assert config.lora is not None
    peft_config = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        trainable_token_indices={"embed_tokens": list(img_token_ids), "lm_head": list(img_token_ids)},
    )
    return get_peft_model(llava, peft_config)


# -- projector variants and loading ---------------------------------------------------------------------------------
PROJECTORS = ("mlp2x_gelu", "linear")
#: Extra key written into a LLaVA dir's config.json to name its projector (LLaVA's own name for the setting).
PROJECTOR_CONFIG_KEY = "mm_projector_type"
#: Sub-folder of a LLaVA dir holding an unmerged peft LoRA adapter (not the dir itself: transformers would load an
#: adapter_config.json found there on its own, and the adapter would then be applied twice).
LORA_SUBDIR = "lora"


def _linear_projector_class():
    from torch import nn

    class LinearProjector(nn.Module):
        """LLaVA-1.1's projector: one Linear from the CLIP width to the LLM width (LLaVA-1.5 uses two with a GELU).
        The Linear keeps the name ``linear_1`` so checkpoint keys stay transformers' own
        (``model.multi_modal_projector.linear_1.*``)."""

        def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
            super().__init__()
            self.linear_1 = nn.Linear(in_features, out_features, bias=bias)

        def forward(self, image_features):
            return self.linear_1(image_features)

    return LinearProjector


def use_projector(llava: nn.Module, variant: str) -> nn.Module:
    """Give a LlavaForConditionalGeneration the projector ``variant`` ('mlp2x_gelu': transformers' own, a no-op;
    'linear': one Linear, keeping linear_1's weights). Works on the meta device too. Returns ``llava``."""
    if variant not in PROJECTORS:
        raise ValueError(f"unknown projector {variant!r}; choose one of {PROJECTORS}")
    m = base_llava(llava)
    old = m.model.multi_modal_projector
    if variant == "mlp2x_gelu" or not hasattr(old, "linear_2"):
        return llava
    new = _linear_projector_class()(old.linear_1.in_features, old.linear_1.out_features, old.linear_1.bias is not None)
    new.linear_1 = old.linear_1
    m.model.multi_modal_projector = new
    setattr(m.config, PROJECTOR_CONFIG_KEY, "linear")
    return llava


def load_llava(llava_dir: str, dtype, projector: str = "mlp2x_gelu") -> nn.Module:
    """LlavaForConditionalGeneration from a local HF dir, with the projector variant applied and, when the dir also
    holds a peft LoRA adapter (``lora/adapter_config.json``, e.g. an imported official checkpoint keeps its LoRA
    unmerged so it can be exported again), the adapter merged: W + (alpha/r)·B·A."""
    import logging as _logging
    from pathlib import Path

    from transformers import LlavaForConditionalGeneration

    # A single-Linear checkpoint has no linear_2: transformers would warn about it before we drop it.
    tf_logger = _logging.getLogger("transformers.modeling_utils")
    level = tf_logger.level
    if projector == "linear":
        tf_logger.setLevel(_logging.ERROR)
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=dtype).eval()
    finally:
        tf_logger.setLevel(level)
    saved = getattr(llava.config, PROJECTOR_CONFIG_KEY, None)
    if saved is not None and saved != projector:
        raise ValueError(f"{llava_dir}: config.json says {PROJECTOR_CONFIG_KEY}={saved!r} but the SmartEdit config "
                         f"asks for projector={projector!r}; set projector={saved!r}")
    use_projector(llava, projector)
    lora_dir = Path(llava_dir) / LORA_SUBDIR
    if (lora_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        llava = PeftModel.from_pretrained(llava, str(lora_dir)).merge_and_unload()
        logger.info("merged the LoRA adapter stored in %s", lora_dir)
    return llava
