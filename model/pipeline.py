"""SmartEditPipeline: instruction-based editing with a trained SmartEdit model, in the diffusers style.

Saved layout (``save_pretrained``; one copy of each model, like a diffusers pipeline folder)::

    model_index.json                  component list
    smartedit_config.json             SmartEditConfig (paths relative to this folder)
    llava/                            LlavaForConditionalGeneration, LoRA and [IMG] rows merged; tokenizer; preprocessor
    qformer/  bim/                    config JSON + safetensors
    unet/  vae/  scheduler/           diffusers folders
    null_text_embeds.safetensors      CLIP("") context (1, 77, D): the null condition, so no text encoder is loaded

Inference: the 32 [IMG] tokens are teacher-forced (one LLM pass, no sampling); three-way classifier-free guidance
over the batch [text+image, image only, none]:  ε = ε_u + s_T (ε_ti − ε_i) + s_I (ε_i − ε_u); v' is added in all
three branches. Deterministic for a given ``generator``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from model.config import SmartEditConfig

if TYPE_CHECKING:
    from PIL import Image

    from model.smartedit import SmartEditModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "smartedit_config.json"
NULL_EMBEDS_NAME = "null_text_embeds.safetensors"


def default_scheduler():
    """Euler ancestral with SD-1.5's training betas (the paper's sampler)."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )


class SmartEditPipeline:
    """Wraps a SmartEditModel and a sampler. ``pipe(image, "make the left cup red")`` → list of PIL images."""

    def __init__(self, model: SmartEditModel, scheduler=None) -> None:
        self.model = model
        self.scheduler = scheduler if scheduler is not None else default_scheduler()

    @property
    def device(self) -> torch.device:
        """Device of the UNet."""
        return self.model.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the UNet."""
        return self.model.unet.dtype

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> SmartEditPipeline:
        """Move everything; dtype defaults to bf16 on GPU and fp32 on CPU."""
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.model.to(device=device, dtype=dtype)
        return self

    # -- persistence ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the folder layout in the module docstring (LoRA and the new token rows merged into llava/)."""
        from safetensors.torch import save_file

        from model.llava import base_llava, merged_state_dict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        m = self.model
        llava = base_llava(m.llava)
        llava.save_pretrained(directory / "llava", state_dict=merged_state_dict(m.llava))
        m.processor.tokenizer.save_pretrained(directory / "llava")
        m.processor.image_processor.save_pretrained(directory / "llava")
        m.qformer.save_pretrained(directory / "qformer")
        m.bim.save_pretrained(directory / "bim")
        m.unet.save_pretrained(directory / "unet")
        m.vae.save_pretrained(directory / "vae")
        self.scheduler.save_pretrained(directory / "scheduler")
        save_file({"null_text_embeds": m.null_text_embeds.detach().float().cpu().contiguous()},
                  str(directory / NULL_EMBEDS_NAME))
        config = dataclasses.replace(
            m.config, llava_dir="llava", tokenizer_dir=None, unet_dir="unet", vae_dir="vae", clip_text_dir=None,
            qformer_dir="qformer", bim_dir="bim", null_text_embeds_path=NULL_EMBEDS_NAME, lora=None,
        )
        config.save(directory / CONFIG_NAME)
        index = {
            "_class_name": type(self).__name__,
            "llava": ["transformers", "LlavaForConditionalGeneration"],
            "qformer": ["model.qformer", "QFormer"],
            "bim": ["model.bim", "BidirectionalInteractionModule"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
        }
        (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        logger.info("saved SmartEdit pipeline to %s", directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> SmartEditPipeline:
        """Load a folder written by ``save_pretrained``."""
        from diffusers import EulerAncestralDiscreteScheduler

        from model.smartedit import build_smartedit

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not a SmartEdit pipeline folder (save_pretrained "
                                    f"writes it)")
        config = SmartEditConfig.load(config_path)
        resolved = {}
        for name in ("llava_dir", "unet_dir", "vae_dir", "qformer_dir", "bim_dir", "null_text_embeds_path"):
            value = getattr(config, name)
            if value is not None and not Path(value).is_absolute():
                resolved[name] = str(directory / value)
        config = dataclasses.replace(config, **resolved)
        model = build_smartedit(config, for_inference=True)
        scheduler = EulerAncestralDiscreteScheduler.from_pretrained(directory / "scheduler")
        return cls(model, scheduler).to(device, dtype)

    # -- sampling ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(
        self,
        image_latents: torch.Tensor,
        context: torch.Tensor,
        null_context: torch.Tensor,
        spatial: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        text_guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Three-way CFG sampling loop. image_latents (B, 4, h, w) = VAE mode(), unscaled; context (B, 77, D);
        null_context (1 or B, 77, D); spatial v' (B, C, h, w) or None. Returns the final latents (B, 4, h, w),
        still scaled by the VAE scaling factor. Steps and scales left None come from the model's sampling config."""
        from diffusers.utils.torch_utils import randn_tensor

        m, sched = self.model, self.scheduler
        defaults = m.config.sampling
        num_inference_steps = defaults.num_inference_steps if num_inference_steps is None else num_inference_steps
        text_guidance_scale = defaults.text_guidance_scale if text_guidance_scale is None else text_guidance_scale
        image_guidance_scale = defaults.image_guidance_scale if image_guidance_scale is None else image_guidance_scale
        device, dtype = image_latents.device, context.dtype
        b = image_latents.shape[0]
        sched.set_timesteps(num_inference_steps, device=device)
        if latents is None:
            latents = randn_tensor(tuple(image_latents.shape), generator=generator, device=device, dtype=dtype)
            latents = latents * sched.init_noise_sigma
        null = null_context.to(device, dtype).expand(b, -1, -1)
        contexts = torch.cat([context, null, null])
        cond_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)]).to(dtype)
        spatial3 = torch.cat([spatial] * 3) if spatial is not None else None
        for t in sched.timesteps:
            model_input = sched.scale_model_input(torch.cat([latents] * 3), t)
            eps = m.predict_noise(model_input, t, cond_latents, contexts, spatial3)
            eps_text, eps_image, eps_uncond = eps.chunk(3)
            eps = (eps_uncond + text_guidance_scale * (eps_text - eps_image)
                   + image_guidance_scale * (eps_image - eps_uncond))
            latents = sched.step(eps, t, latents, generator=generator, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | Sequence[Image.Image],
        instruction: str | Sequence[str],
        num_inference_steps: int | None = None,
        text_guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
    ) -> list[Image.Image] | torch.Tensor:
        """Edit ``image`` following ``instruction``. Returns PIL images, or a (B, 3, H, W) tensor in [0, 1] for
        output_type='pt', or latents for 'latent'. Arguments left None come from the saved model config: steps and
        guidance scales from ``config.sampling`` (paper: 100, 7.5, 1.5; tiny: 4 steps), the size from
        ``config.resolution``."""
        from PIL import Image as PILImage

        from model.processor import pil_to_signed_unit_range

        m = self.model
        height = height or m.config.resolution
        width = width or m.config.resolution
        images = [image] if isinstance(image, PILImage.Image) else list(image)
        instructions = [instruction] * len(images) if isinstance(instruction, str) else list(instruction)
        if len(instructions) != len(images):
            raise ValueError(f"{len(images)} images for {len(instructions)} instructions")
        f = m.vae_scale_factor
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f}, got {height}×{width}")
        device, dtype = self.device, self.dtype
        batch = m.processor(images, instructions)
        src = torch.stack([pil_to_signed_unit_range(im, (height, width)) for im in images])
        enc = m.encode_instruction(
            batch["clip_pixels"].to(device), batch["input_ids"].to(device), batch["attention_mask"].to(device),
            batch["img_token_mask"].to(device),
        )
        context, spatial = m.condition(enc["img_hidden"].to(dtype), enc["patch_features"], (height // f, width // f))
        image_latents = m.vae.encode(src.to(device, m.vae.dtype)).latent_dist.mode().to(dtype)
        latents = self.denoise(
            image_latents, context.to(dtype), m.null_text_embeds, spatial, num_inference_steps, text_guidance_scale,
            image_guidance_scale, generator,
        )
        if output_type == "latent":
            return latents
        decoded = m.vae.decode(latents.to(m.vae.dtype) / m.vae.config.scaling_factor).sample
        pixels = (decoded.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return pixels
        arrays = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        return [PILImage.fromarray(a) for a in arrays]

