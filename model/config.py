"""Typed configuration of the SmartEdit model and its named presets.

Usage::

    from model.config import get_preset
    cfg = get_preset("tiny")                                   # random weights, CPU, seconds
    cfg = get_preset("7b", llava_dir="ckpt/llava-7b-hf", unet_dir="ckpt/instructdiffusion/unet",
                     vae_dir="ckpt/sd15/vae", clip_text_dir="ckpt/clip-vit-large-patch14")
    cfg = get_preset("7b-official", ...)                       # the official code's LoRA (r=8, alpha=16)
    cfg = get_preset("tiny", bim={"variant": "plain"})         # nested overrides merge field by field

Three concerns, three classes: `SmartEditConfig` (the model: parts, sizes, directories, dtypes) holds
`LossConfig` (the training objective: loss weights, CFG dropout, DDPM steps) and `SamplingConfig` (inference
defaults: steps and guidance, the one place `SmartEditPipeline`, `smartedit edit` and the evaluation read them).
Every field is checked against its annotation at construction (``Literal`` choices included), so a mistyped
value is an error naming the field, the value and the choices, never a silently different model.

Paper values are the defaults; where the official code differs, its value is a named preset (``-official``:
the official code's values; ``-code`` is a deprecated spelling of the same presets).
This module imports nothing heavy: the CLI and the training recipes read it at startup.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BIMVariant = Literal["bim", "plain", "cross_attention"]
Projector = Literal["mlp2x_gelu", "linear"]
DType = Literal["float32", "bfloat16", "float16"]


# -- validation shared by every config dataclass ------------------------------------------------------------------
# dataclasses check nothing; pydantic validates a value against an annotation (Literal, unions, tuples) in its lax
# mode. We keep plain dataclasses (replace/asdict/fields unchanged) and validate field by field with pydantic.


@functools.cache
def _field_adapter(cls: type, name: str):
    from pydantic import TypeAdapter

    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return hints[name], TypeAdapter(hints[name])


def literal_choices(hint: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``X | None``), else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg) + ((None,) if type(None) in typing.get_args(hint) else ())
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def validate_fields(obj: Any) -> None:
    """Check every field of dataclass ``obj`` against its annotation, coercing where pydantic's lax mode does
    (list → tuple, int → float, path → str). Raises one ValueError line naming the class, field, value and, for
    ``Literal`` fields, the choices."""
    from pydantic import ValidationError

    cls = type(obj)
    for f in dataclasses.fields(obj):
        hint, adapter = _field_adapter(cls, f.name)
        value = _plain(getattr(obj, f.name))
        try:
            checked = adapter.validate_python(value)
        except ValidationError as err:
            choices = literal_choices(hint)
            if choices is not None:
                raise ValueError(f"{cls.__name__}.{f.name} = {value!r} is not a valid choice; choose one of "
                                 f"{', '.join(repr(c) for c in choices)}") from None
            raise ValueError(f"{cls.__name__}.{f.name} = {value!r}: {err.errors()[0]['msg']}") from None
        object.__setattr__(obj, f.name, checked)


def merge(config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` with ``overrides`` applied field by field: a dict given for a nested config merges into it
    (``{"bim": {"variant": "plain"}}`` keeps the other BIM sizes); unknown keys are an error naming them."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{type(config).__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    changes = {}
    for name, value in overrides.items():
        current = getattr(config, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = merge(current, value)
        changes[name] = value
    return dataclasses.replace(config, **changes)


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
        validate_fields(self)
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
        validate_fields(self)
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
        validate_fields(self)
        if self.embedding_dim % 2:
            raise ValueError(f"BIMConfig.embedding_dim must be even (random position embedding), got {self.embedding_dim}")
        if (self.embedding_dim // self.attention_downsample_rate) % self.num_heads:
            raise ValueError(
                f"BIMConfig: embedding_dim/attention_downsample_rate = "
                f"{self.embedding_dim // self.attention_downsample_rate} is not divisible by num_heads {self.num_heads}"
            )


@dataclass
class LossConfig:
    """The training objective: loss weights, InstructPix2Pix CFG dropout and the DDPM noise schedule length."""

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

    def __post_init__(self) -> None:
        validate_fields(self)
        lo, hi = self.image_drop_range
        if not (0.0 <= self.text_drop_below <= 1.0 and 0.0 <= lo <= hi <= 1.0):
            raise ValueError(
                f"LossConfig CFG dropout out of range: text_drop_below={self.text_drop_below}, "
                f"image_drop_range={self.image_drop_range} (need 0 <= low <= high <= 1)"
            )
        if self.num_train_timesteps < 1:
            raise ValueError(f"LossConfig.num_train_timesteps must be >= 1, got {self.num_train_timesteps}")


@dataclass
class SamplingConfig:
    """Inference defaults (three-way CFG, Euler ancestral). Saved with a pipeline; ``SmartEditPipeline.__call__``,
    ``smartedit edit`` and the evaluation use them unless told otherwise. The edit size is the model's
    ``resolution``."""

    num_inference_steps: int = 100
    """Euler-ancestral steps (paper: 100)."""
    text_guidance_scale: float = 7.5
    """s_T (paper: 7.5)."""
    image_guidance_scale: float = 1.5
    """s_I (1.4-1.6 tried in the paper)."""

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.num_inference_steps < 1:
            raise ValueError(f"SamplingConfig.num_inference_steps must be >= 1, got {self.num_inference_steps}")


# Fields that moved from SmartEditConfig into its sub-configs (read from pipeline folders saved before the split).
_MOVED = {name: "loss" for name in ("lm_loss_weight", "diffusion_loss_weight", "align_loss_weight", "text_drop_below",
                                    "image_drop_range", "num_train_timesteps")}
_MOVED |= {name: "sampling" for name in ("num_inference_steps", "text_guidance_scale", "image_guidance_scale")}


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
    loss: LossConfig = field(default_factory=LossConfig)
    """The training objective (loss weights, CFG dropout)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Inference defaults (steps, guidance scales)."""
    resolution: int = 256
    """Edit resolution in pixels (training crops and the pipeline's default output size)."""
    llm_dtype: DType = "bfloat16"
    """LLaVA weights dtype (QFormer, BIM, UNet stay fp32)."""
    vae_dtype: DType = "bfloat16"
    """VAE dtype (frozen)."""
    gradient_checkpointing: bool = True
    """Checkpoint the LLM and UNet activations."""
    seed: int = 0
    """Seed for random initialisation of the new modules (and the tiny preset's random components)."""

    def __post_init__(self) -> None:
        for name, cls in (("lora", LoRAConfig), ("qformer", QFormerConfig), ("bim", BIMConfig), ("loss", LossConfig),
                          ("sampling", SamplingConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        validate_fields(self)
        if self.num_img_tokens < 1:
            raise ValueError(f"SmartEditConfig.num_img_tokens must be >= 1, got {self.num_img_tokens}")
        if "{}" not in self.img_token_format:
            raise ValueError(f"SmartEditConfig.img_token_format needs a '{{}}' for the index, got {self.img_token_format!r}")
        if "{instruction}" not in self.prompt_template or "{image}" not in self.prompt_template:
            raise ValueError("SmartEditConfig.prompt_template must contain '{image}' and '{instruction}'")
        if self.resolution % 8:
            raise ValueError(f"SmartEditConfig.resolution must be a multiple of 8, got {self.resolution}")

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
        """Inverse of ``to_dict``; unknown keys are an error naming the key. Reads the flat layout of folders
        saved before the loss and sampling fields had their own configs."""
        data = dict(data)
        for name, group in _MOVED.items():
            if name in data:
                data.setdefault(group, {})[name] = data.pop(name)
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
        if self.stage == 1:  # alignment builds no UNet or VAE (model/smartedit.py build_smartedit)
            del needs["unet_dir"], needs["vae_dir"]
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
        sampling=SamplingConfig(num_inference_steps=4),
    )
    return merge(base, overrides)


def _real(preset: str, llm_width: int, lora: LoRAConfig, /, **overrides: Any) -> SmartEditConfig:
    del llm_width  # the LLM width is read from the checkpoint; kept in the signature to document the preset
    return merge(SmartEditConfig(preset=preset, lora=dataclasses.replace(lora)), overrides)


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


#: Old spellings of preset names: the official code's values were once the `-code` presets.
DEPRECATED_PRESETS = {"7b-code": "7b-official", "13b-code": "13b-official"}


def canonical_preset(name: str) -> str:
    """``name``, or its current spelling (with a FutureWarning) when it is a deprecated alias."""
    if name in DEPRECATED_PRESETS:
        new = DEPRECATED_PRESETS[name]
        warnings.warn(f"preset {name!r} is deprecated: it is spelled {new!r} now (the official code's values); "
                      f"using {new!r}", FutureWarning, stacklevel=3)
        return new
    return name


def get_preset(name: str, **overrides: Any) -> SmartEditConfig:
    """Named preset with field overrides (e.g. directories); a dict for a nested config (``bim``, ``lora``,
    ``qformer``, ``loss``, ``sampling``) merges into the preset's. Unknown names list the choices."""
    name = canonical_preset(name)
    if name not in PRESETS:
        raise ValueError(f"unknown SmartEdit preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
