"""Typed configuration of the SmartEdit model and its named presets.

Usage::

    from model.config import get_preset
    cfg = get_preset("tiny")                                   # random weights, CPU, seconds
    cfg = get_preset("7b", llava_dir="ckpt/llava-7b-hf", unet_dir="ckpt/instructdiffusion/unet",
                     vae_dir="ckpt/sd15/vae", clip_text_dir="ckpt/clip-vit-large-patch14")
    cfg = get_preset("7b-official", ...)                       # the official code's LoRA (r=8, alpha=16)

Paper values are the defaults; where the official code differs, its value is a named preset (REFERENCE §1-2).
This module imports nothing heavy: the CLI and the training recipes read it at startup.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BIMVariant = Literal["bim", "plain", "cross_attention"]
Projector = Literal["mlp2x_gelu", "linear"]
DType = Literal["float32", "bfloat16", "float16"]

#: Regex for peft: only the language model's attention projections (plain names would also wrap the CLIP tower).
LANGUAGE_MODEL_QV = r".*language_model.*\.(q_proj|v_proj)"


VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)

#: Named prompt templates ({image} = the image placeholder tokens, {instruction} = the edit instruction; the [IMG]
#: tokens follow the template). "smartedit-official" is what the released SmartEdit weights were trained on
#: (official ``test/DS_SmartEdit_test.py``): the vicuna_v1 system prompt, the first template of
#: ``data/ConversationTemplateEditing_use.txt`` with ``[cap]`` = ``"<im_start><image features><im_end>{instruction}"``,
#: and the template's reply before the [IMG] tokens. The official code strips spaces around added tokens, hence none
#: around {image}.
PROMPT_TEMPLATES = {
    "llava-v1": VICUNA_V1_SYSTEM + " USER: {image}\n{instruction} ASSISTANT:",
    "smartedit-official": VICUNA_V1_SYSTEM + " USER: Could you produce an image based on the previous image and text "
    'description "<im_start>{image}<im_end>{instruction}"? ASSISTANT: Certainly, I can create the image you requested',
}


@dataclass
class LoRAConfig:
    """LoRA on the LLM of LLaVA (peft). The LLM weights stay frozen; only the adapters train in stage 2."""

    r: int = 16
    """Rank. Paper: 16; official code: 8."""
    alpha: float = 27
    """lora_alpha. Paper: 27; official code: 16."""
    dropout: float = 0.05
    """Dropout on the LoRA input. Official code: 0.05 (the paper does not say)."""
    target_modules: str = LANGUAGE_MODEL_QV
    """peft target regex. Keep it restricted to the language model: plain ``["q_proj","v_proj"]`` also wraps CLIP."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoRAConfig.r must be positive, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRAConfig.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")


LORA_PAPER = LoRAConfig(r=16, alpha=27, dropout=0.05)
LORA_OFFICIAL = LoRAConfig(r=8, alpha=16, dropout=0.05)


@dataclass
class QFormerConfig:
    """BLIP-2 style QFormer mapping the LLM's [IMG] hidden states to a CLIP-text-shaped context (77 x 768)."""

    num_layers: int = 6
    """Transformer layers."""
    hidden_size: int = 768
    """Width; equals the UNet's cross-attention width (SD-1.5: 768)."""
    num_heads: int = 12
    """Attention heads."""
    intermediate_size: int = 3072
    """FFN width."""
    cross_attention_frequency: int = 2
    """Cross-attention to the LLM states every n-th layer (layers 0, 2, 4 for n=2)."""
    num_queries: int = 77
    """Learned queries; 77 = the CLIP text context length the UNet was trained on."""
    query_init_std: float = 0.02
    """Queries are initialised N(0, std)."""
    dropout: float = 0.1
    """Hidden and attention dropout (BLIP-2 default)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"QFormerConfig.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_layers < 1 or self.cross_attention_frequency < 1:
            raise ValueError("QFormerConfig.num_layers and cross_attention_frequency must be >= 1")


@dataclass
class BIMConfig:
    """Bidirectional Interaction Module (SAM TwoWayTransformer between the QFormer output and CLIP patch features)."""

    variant: BIMVariant = "bim"
    """'bim' (paper), 'plain' (no interaction, QFormer output straight to the UNet), 'cross_attention' (text queries
    image once, no image-side output): the paper's Table 2 ablation."""
    depth: int = 2
    """TwoWayTransformer blocks."""
    embedding_dim: int = 1024
    """Width of the interaction; must equal the CLIP vision width (ViT-L/14: 1024)."""
    num_heads: int = 8
    """Attention heads."""
    mlp_dim: int = 2048
    """MLP width inside the TwoWayTransformer."""
    attention_downsample_rate: int = 2
    """SAM's internal down-projection of the cross attentions."""
    text_residual_scale: float = 0.5
    """f'' = f + scale * Linear_zero(f')."""

    def __post_init__(self) -> None:
        if self.embedding_dim % 2:
            raise ValueError(f"BIMConfig.embedding_dim must be even (random position embedding), got {self.embedding_dim}")
        if (self.embedding_dim // self.attention_downsample_rate) % self.num_heads:
            raise ValueError(
                f"BIMConfig: embedding_dim/attention_downsample_rate = "
                f"{self.embedding_dim // self.attention_downsample_rate} is not divisible by num_heads {self.num_heads}"
            )


@dataclass
class SmartEditConfig:
    """Everything needed to build a SmartEditModel. Directories are local (no downloads)."""

    preset: str = "7b"
    """Name of the preset this config came from (for error messages and checkpoints)."""
    llava_dir: str | None = None
    """LLaVA in Hugging Face format (LlavaForConditionalGeneration: config.json, weights, tokenizer, preprocessor)."""
    unet_dir: str | None = None
    """InstructDiffusion / InstructPix2Pix UNet (diffusers UNet2DConditionModel dir, 8 input channels) or a stock
    SD-1.5 UNet (4 channels; widened with zero-initialised extra channels)."""
    vae_dir: str | None = None
    """SD-1.5 AutoencoderKL (diffusers dir)."""
    clip_text_dir: str | None = None
    """CLIP ViT-L/14 text encoder + tokenizer (CLIPTextModel dir): stage-1 target and the null condition."""
    tokenizer_dir: str | None = None
    """Optional LLaVA tokenizer dir when it is not inside llava_dir."""
    qformer_dir: str | None = None
    """Trained QFormer weights (pipeline dirs); None = random init."""
    bim_dir: str | None = None
    """Trained BIM weights (pipeline dirs); None = zero-initialised heads."""
    null_text_embeds_path: str | None = None
    """Saved CLIP("") context (1, 77, D) used instead of loading the text encoder (pipeline dirs)."""
    num_img_tokens: int = 32
    """r: new tokens <img_0>..<img_{r-1}> appended after the instruction."""
    img_token_format: str = "<img_{}>"
    """Spelling of the new tokens."""
    prompt_template: str = PROMPT_TEMPLATES["llava-v1"]
    """LLaVA v1 conversation; {image} becomes the image placeholder tokens. Answer and [IMG] tokens follow.
    Named alternatives in ``PROMPT_TEMPLATES`` (e.g. "smartedit-official" for imported official weights)."""
    projector: Projector = "mlp2x_gelu"
    """LLaVA projector: "mlp2x_gelu" (LLaVA-1.5, transformers' default) or "linear" (LLaVA-1.1, the paper's base
    and the released SmartEdit weights: one Linear from CLIP to the LLM width)."""
    lora: LoRAConfig | None = field(default_factory=lambda: dataclasses.replace(LORA_PAPER))
    """LoRA on the LLM; None = no adapter (merged inference checkpoints)."""
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    """QFormer sizes."""
    bim: BIMConfig = field(default_factory=BIMConfig)
    """BIM sizes and ablation variant."""
    stage: Literal[1, 2] = 2
    """1: alignment (CE on [IMG] + MSE to CLIP text); 2: joint (CE + diffusion MSE)."""
    lm_loss_weight: float = 1.0
    """Weight of the CE loss (1:1 in the paper)."""
    diffusion_loss_weight: float = 1.0
    """Weight of the diffusion MSE."""
    align_loss_weight: float = 1.0
    """Stage-1 weight of MSE(QFormer(h), CLIP text)."""
    text_drop_below: float = 0.10
    """CFG dropout: context -> CLIP('') if r < this (r ~ U(0, 1) per sample)."""
    image_drop_range: tuple[float, float] = (0.05, 0.15)
    """CFG dropout: conditioning latent -> 0 if low <= r < high. v' is never dropped."""
    num_train_timesteps: int = 1000
    """DDPM training steps (epsilon prediction)."""
    resolution: int = 256
    """Edit resolution in pixels."""
    llm_dtype: DType = "bfloat16"
    """LLaVA weights dtype (QFormer, BIM, UNet stay fp32)."""
    vae_dtype: DType = "bfloat16"
    """VAE dtype (frozen)."""
    gradient_checkpointing: bool = True
    """Checkpoint the LLM and UNet activations."""
    text_guidance_scale: float = 7.5
    """s_T at inference (default of the `smartedit edit` CLI)."""
    image_guidance_scale: float = 1.5
    """s_I at inference (1.4-1.6 tried in the paper; CLI default)."""
    num_inference_steps: int = 100
    """Euler-ancestral steps at inference (CLI default)."""
    seed: int = 0
    """Seed for random initialisation of the new modules (and the tiny preset's random components)."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoRAConfig(**self.lora)
        if isinstance(self.qformer, dict):
            self.qformer = QFormerConfig(**self.qformer)
        if isinstance(self.bim, dict):
            self.bim = BIMConfig(**self.bim)
        self.image_drop_range = tuple(self.image_drop_range)  # type: ignore[assignment]
        if self.stage not in (1, 2):
            raise ValueError(f"SmartEditConfig.stage must be 1 or 2, got {self.stage!r}")
        if self.num_img_tokens < 1:
            raise ValueError(f"SmartEditConfig.num_img_tokens must be >= 1, got {self.num_img_tokens}")
        if "{}" not in self.img_token_format:
            raise ValueError(f"SmartEditConfig.img_token_format needs a '{{}}' for the index, got {self.img_token_format!r}")
        if "{instruction}" not in self.prompt_template or "{image}" not in self.prompt_template:
            raise ValueError("SmartEditConfig.prompt_template must contain '{image}' and '{instruction}'")
        lo, hi = self.image_drop_range
        if not (0.0 <= self.text_drop_below <= 1.0 and 0.0 <= lo <= hi <= 1.0):
            raise ValueError(
                f"SmartEditConfig CFG dropout out of range: text_drop_below={self.text_drop_below}, "
                f"image_drop_range={self.image_drop_range} (need 0 <= low <= high <= 1)"
            )
        if self.resolution % 8:
            raise ValueError(f"SmartEditConfig.resolution must be a multiple of 8, got {self.resolution}")
        if self.projector not in ("mlp2x_gelu", "linear"):
            raise ValueError(f"SmartEditConfig.projector must be 'mlp2x_gelu' or 'linear', got {self.projector!r}")
        for name in ("llm_dtype", "vae_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"SmartEditConfig.{name} must be float32, bfloat16 or float16")

    @property
    def is_tiny(self) -> bool:
        """True for the in-code random tiny preset (no directories needed)."""
        return self.preset == "tiny"

    def img_tokens(self) -> list[str]:
        """The new token strings, e.g. ['<img_0>', ..., '<img_31>']."""
        return [self.img_token_format.format(i) for i in range(self.num_img_tokens)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmartEditConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SmartEditConfig: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SmartEditConfig:
        """Read a JSON written by ``save``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check_directories(self) -> None:
        """Raise a clear error for each required directory that is unset or missing (real presets only)."""
        if self.is_tiny and self.llava_dir is None:
            return
        needs = {
            "llava_dir": "a LLaVA checkpoint in Hugging Face format (LlavaForConditionalGeneration: config.json, "
            "*.safetensors, tokenizer files, preprocessor_config.json)",
            "unet_dir": "a diffusers UNet2DConditionModel dir (config.json + diffusion_pytorch_model.safetensors), e.g. "
            "InstructDiffusion or InstructPix2Pix 'unet/', or SD-1.5 'unet/'",
            "vae_dir": "a diffusers AutoencoderKL dir (SD-1.5 'vae/')",
        }
        if self.null_text_embeds_path is None:
            needs["clip_text_dir"] = "a CLIP ViT-L/14 text encoder dir (transformers CLIPTextModel + tokenizer)"
        for name, what in needs.items():
            value = getattr(self, name)
            if value is None:
                raise FileNotFoundError(f"preset '{self.preset}': field '{name}' is not set; put {what} there and pass "
                                        f"{name}=<dir>")
            if not Path(value).is_dir():
                raise FileNotFoundError(f"preset '{self.preset}': field '{name}' = '{value}' is not a directory; put "
                                        f"{what} there")
        for name in ("tokenizer_dir", "qformer_dir", "bim_dir"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise FileNotFoundError(f"preset '{self.preset}': field '{name}' = '{value}' is not a directory")
        if self.null_text_embeds_path is not None and not Path(self.null_text_embeds_path).is_file():
            raise FileNotFoundError(f"preset '{self.preset}': field 'null_text_embeds_path' = "
                                    f"'{self.null_text_embeds_path}' is not a file")


def tiny_config(**overrides: Any) -> SmartEditConfig:
    """Tiny random preset: every component built in code with small widths; fp32; runs on CPU in seconds."""
    base = SmartEditConfig(
        preset="tiny",
        prompt_template="USER: {image}\n{instruction} ASSISTANT:",
        lora=LoRAConfig(r=4, alpha=8, dropout=0.0),
        qformer=QFormerConfig(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, dropout=0.0),
        bim=BIMConfig(depth=1, embedding_dim=32, num_heads=2, mlp_dim=64, attention_downsample_rate=2),
        resolution=32,
        llm_dtype="float32",
        vae_dtype="float32",
        gradient_checkpointing=False,
        num_inference_steps=4,
    )
    return dataclasses.replace(base, **overrides)


def _real(preset: str, llm_width: int, lora: LoRAConfig, **overrides: Any) -> SmartEditConfig:
    del llm_width  # the LLM width is read from the checkpoint; kept in the signature to document the preset
    return SmartEditConfig(preset=preset, lora=dataclasses.replace(lora), **overrides)


PRESETS = {
    "tiny": lambda **kw: tiny_config(**kw),
    "7b": lambda **kw: _real("7b", 4096, LORA_PAPER, **kw),
    "13b": lambda **kw: _real("13b", 5120, LORA_PAPER, **kw),
    "7b-official": lambda **kw: _real("7b-official", 4096, LORA_OFFICIAL, **kw),
    "13b-official": lambda **kw: _real("13b-official", 5120, LORA_OFFICIAL, **kw),
    # The paper's base LLM: LLaVA-1.1 (Vicuna-1.1, CLIP-L/14 at 224 px, layer -2, one Linear projector). llava_dir
    # is a LLaVA-1.1 / LLaVA-Lightning checkpoint converted by `smartedit import-checkpoint llava-original`.
    "7b-paper": lambda **kw: _real("7b-paper", 4096, LORA_PAPER, **{"projector": "linear", **kw}),
    "13b-paper": lambda **kw: _real("13b-paper", 5120, LORA_PAPER, **{"projector": "linear", **kw}),
}


def get_preset(name: str, **overrides: Any) -> SmartEditConfig:
    """Named preset with field overrides (e.g. directories). Unknown names list the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown SmartEdit preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
