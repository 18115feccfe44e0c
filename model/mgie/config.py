"""Typed configuration of MGIE, with named presets.

Usage::

    from model.mgie.config import get_mgie_preset
    cfg = get_mgie_preset("tiny")                                  # random, CPU, seconds
    cfg = get_mgie_preset("7b", llava_dir="ckpt/llava-7b-v1-hf", unet_dir="ckpt/sd15/unet", vae_dir="ckpt/sd15/vae")
    cfg = get_mgie_preset("7b", token_rows="new_rows")             # train only the 8 new embedding / lm_head rows

Values follow the official code (apple/ml-mgie ``mgie_llava.py``, ``mgie_train.py``, ``demo.ipynb``), which agrees
with the paper. The loss and sampling sub-configs are SmartEdit's classes (``LossConfig``, ``SamplingConfig``) with
MGIE's values, so `smartedit edit` and the evaluation read either model's the same way. Nothing heavy is imported
here: the CLI and the recipe read it at startup.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.config import LossConfig, SamplingConfig, merge, validate_fields

DType = Literal["float32", "bfloat16", "float16"]
TokenRows = Literal["full", "new_rows"]

#: LLaVA v1 (Vicuna v1.1) system prompt, as in the official ``conv_templates['vicuna_v1_1']``.
VICUNA_V1_1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)


@dataclass
class EditHeadConfig:
    """The edit head ("EditMapper" in the official code): LLM states → a CLIP-text-shaped UNet context."""

    hidden_size: int = 512
    """Width of the transformer between the two linear maps (official: 512)."""
    num_heads: int = 4
    """Attention heads (official: 4)."""
    num_encoder_layers: int = 4
    """Encoder layers over the 8 [IMG] states (official: 4)."""
    num_decoder_layers: int = 4
    """Decoder layers of the learned queries (official: 4)."""
    feedforward_size: int = 2048
    """FFN width (official: 2048)."""
    dropout: float = 0.0
    """Dropout inside the transformer (official: 0)."""
    num_queries: int = 77
    """Learned decoder queries; 77 = the CLIP text context length of SD-1.5."""
    query_init_std: float = 1.0
    """Queries start N(0, std²); the official code uses ``torch.randn`` (std 1)."""

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EditHeadConfig.hidden_size {self.hidden_size} is not divisible by num_heads "
                             f"{self.num_heads}")
        if min(self.num_encoder_layers, self.num_decoder_layers, self.num_queries) < 1:
            raise ValueError("EditHeadConfig: num_encoder_layers, num_decoder_layers and num_queries must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"EditHeadConfig.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class MGIEConfig:
    """Everything needed to build an MGIEModel. Directories are local (no downloads)."""

    preset: str = "7b"
    """Name of the preset this config came from (for error messages and checkpoints)."""
    llava_dir: str | None = None
    """LLaVA-7B v1 in Hugging Face format (LlavaForConditionalGeneration dir with tokenizer and preprocessor)."""
    unet_dir: str | None = None
    """diffusers UNet2DConditionModel dir: SD-1.5 'unet/' (4 channels, widened with zero-initialised extra
    channels as the official code does) or an 8-channel one (InstructPix2Pix, a saved MGIE pipeline)."""
    vae_dir: str | None = None
    """SD-1.5 AutoencoderKL dir (frozen)."""
    tokenizer_dir: str | None = None
    """Optional tokenizer dir when it is not inside llava_dir."""
    edit_head_dir: str | None = None
    """Trained edit head (pipeline dirs); None = random init with ``seed``."""
    num_img_tokens: int = 8
    """New tokens [IMG0]..[IMG7] closing every answer (official: 8)."""
    img_token_format: str = "[IMG{}]"
    """Spelling of the new tokens (official: ``[IMG0]``)."""
    prompt_template: str = VICUNA_V1_1_SYSTEM + " USER: what will this image be like if '{instruction}'\n{image} ASSISTANT:"
    """The user turn of the official training data; {image} becomes the image placeholder tokens."""
    token_rows: TokenRows = "full"
    """'full': the whole embed_tokens and lm_head train (official code); 'new_rows': only the [IMG] rows train
    (peft TrainableTokens), so the original vocabulary cannot drift."""
    edit_head: EditHeadConfig = field(default_factory=EditHeadConfig)
    """Edit head sizes."""
    loss: LossConfig = field(default_factory=lambda: LossConfig(diffusion_loss_weight=0.5))
    """CE on the answer (summary + [IMG] tokens + </s>) + 0.5 · diffusion MSE (official ``loss_ce + loss_edit*0.5``);
    CFG dropout as InstructPix2Pix, the text condition replaced by the learned null (align_loss_weight is unused)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Inference defaults: 100 Euler-ancestral steps, s_T 7.5, s_I 1.5 (the official demo's InstructPix2Pix defaults)."""
    resolution: int = 256
    """Edit resolution in pixels (official: 256)."""
    llm_dtype: DType = "bfloat16"
    """Frozen LLaVA weights dtype; the trained embed_tokens / lm_head are kept in fp32."""
    vae_dtype: DType = "bfloat16"
    """VAE dtype (frozen)."""
    gradient_checkpointing: bool = True
    """Checkpoint the LLM and UNet activations."""
    max_new_tokens: int = 96
    """Greedy generation length at inference (official demo: 96)."""
    no_repeat_ngram_size: int = 3
    """Generation constraint at inference (official demo: 3)."""
    seed: int = 0
    """Seed of the random initialisation of the new modules (and of the tiny preset's random components)."""

    def __post_init__(self) -> None:
        for name, cls in (("edit_head", EditHeadConfig), ("loss", LossConfig), ("sampling", SamplingConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        validate_fields(self)
        if self.num_img_tokens < 1:
            raise ValueError(f"MGIEConfig.num_img_tokens must be >= 1, got {self.num_img_tokens}")
        if "{}" not in self.img_token_format:
            raise ValueError(f"MGIEConfig.img_token_format needs a '{{}}' for the index, got {self.img_token_format!r}")
        if "{instruction}" not in self.prompt_template or "{image}" not in self.prompt_template:
            raise ValueError("MGIEConfig.prompt_template must contain '{image}' and '{instruction}'")
        if self.resolution % 8:
            raise ValueError(f"MGIEConfig.resolution must be a multiple of 8, got {self.resolution}")
        if self.max_new_tokens <= self.num_img_tokens:
            raise ValueError(f"MGIEConfig.max_new_tokens ({self.max_new_tokens}) must exceed num_img_tokens "
                             f"({self.num_img_tokens})")

    @property
    def is_tiny(self) -> bool:
        """True for the in-code random tiny preset."""
        return self.preset == "tiny"

    def img_tokens(self) -> list[str]:
        """The new token strings, ['[IMG0]', …, '[IMG7]']."""
        return [self.img_token_format.format(i) for i in range(self.num_img_tokens)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MGIEConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MGIEConfig: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MGIEConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check_directories(self) -> None:
        """Raise a clear error for each required directory that is unset or missing (real presets only)."""
        if self.is_tiny and self.llava_dir is None:
            return
        needs = {
            "llava_dir": "LLaVA-7B v1 in Hugging Face format (LlavaForConditionalGeneration: config.json, "
            "*.safetensors, tokenizer files, preprocessor_config.json)",
            "unet_dir": "a diffusers UNet2DConditionModel dir (SD-1.5 'unet/' or an 8-channel InstructPix2Pix one)",
            "vae_dir": "a diffusers AutoencoderKL dir (SD-1.5 'vae/')",
        }
        for name, what in needs.items():
            value = getattr(self, name)
            if value is None:
                raise FileNotFoundError(f"MGIE preset '{self.preset}': field '{name}' is not set; put {what} there "
                                        f"and pass {name}=<dir>")
            if not Path(value).is_dir():
                raise FileNotFoundError(f"MGIE preset '{self.preset}': field '{name}' = '{value}' is not a "
                                        f"directory; put {what} there")
        for name in ("tokenizer_dir", "edit_head_dir"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise FileNotFoundError(f"MGIE preset '{self.preset}': field '{name}' = '{value}' is not a directory")


def tiny_mgie_config(**overrides: Any) -> MGIEConfig:
    """Tiny random preset: LLaVA 64 wide, edit head 32 wide with one layer each side, fp32; CPU in seconds."""
    base = MGIEConfig(
        preset="tiny",
        prompt_template="USER: what will this image be like if '{instruction}'\n{image} ASSISTANT:",
        edit_head=EditHeadConfig(hidden_size=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1,
                                 feedforward_size=64),
        resolution=32,
        llm_dtype="float32",
        vae_dtype="float32",
        gradient_checkpointing=False,
        sampling=SamplingConfig(num_inference_steps=4),
        max_new_tokens=12,
    )
    return merge(base, overrides)


MGIE_PRESETS = {
    "tiny": lambda **kw: tiny_mgie_config(**kw),
    "7b": lambda **kw: merge(MGIEConfig(preset="7b"), kw),
}


def get_mgie_preset(name: str, **overrides: Any) -> MGIEConfig:
    """Named MGIE preset with field overrides; a dict for a nested config (``edit_head``, ``loss``, ``sampling``)
    merges into the preset's. Unknown names list the choices."""
    if name not in MGIE_PRESETS:
        raise ValueError(f"unknown MGIE preset {name!r}; choose one of {sorted(MGIE_PRESETS)}")
    return MGIE_PRESETS[name](**overrides)
