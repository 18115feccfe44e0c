"""MGIEPipeline: instruction-based editing with a trained MGIE model, with SmartEditPipeline's interface.

Saved layout (``save_pretrained``)::

    model_index.json      component list (``_class_name`` = MGIEPipeline; model/pipelines.py dispatches on it)
    mgie_config.json      MGIEConfig (paths relative to this folder)
    llava/                LlavaForConditionalGeneration with the trained embed_tokens / lm_head; tokenizer; preprocessor
    edit_head/            EditMapper config JSON + safetensors
    unet/  vae/  scheduler/

Inference (apple/ml-mgie ``demo.ipynb``): greedy generation (max 96 new tokens, no-repeat-ngram 3) of the expressive
instruction and the [IMG] tokens; the hidden states predicting [IMG0..7] (positions.py; the last 8 when they are
not emitted) go through the edit head; the null condition is the head on zeros; then InstructPix2Pix three-way
guidance (s_T 7.5, s_I 1.5) with Euler ancestral, 100 steps. The denoising loop is SmartEditPipeline's (inherited),
checked against diffusers' StableDiffusionInstructPix2PixPipeline in the tests.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from model.mgie.config import MGIEConfig
from model.pipeline import SmartEditPipeline

if TYPE_CHECKING:
    from PIL import Image

    from model.mgie.model import MGIEModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "mgie_config.json"


class MGIEPipeline(SmartEditPipeline):
    """``pipe(image, "make the frame red")`` → list of PIL images; ``pipe.expressive_instructions`` holds the
    model's expressive instructions of the last call."""

    def __init__(self, model: MGIEModel, scheduler=None) -> None:
        super().__init__(model, scheduler)
        self.expressive_instructions: list[str] = []

    # -- persistence ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the folder layout in the module docstring (trained token rows merged into llava/)."""
        from model.llava import base_llava, merged_state_dict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        m = self.model
        base_llava(m.llava).save_pretrained(directory / "llava",
                                                      state_dict=merged_state_dict(m.llava))
        m.processor.tokenizer.save_pretrained(directory / "llava")
        m.processor.image_processor.save_pretrained(directory / "llava")
        m.edit_head.save_pretrained(directory / "edit_head")
        m.unet.save_pretrained(directory / "unet")
        m.vae.save_pretrained(directory / "vae")
        self.scheduler.save_pretrained(directory / "scheduler")
        config = dataclasses.replace(m.config, llava_dir="llava", tokenizer_dir=None, unet_dir="unet", vae_dir="vae",
                                     edit_head_dir="edit_head")
        config.save(directory / CONFIG_NAME)
        index = {
            "_class_name": type(self).__name__,
            "llava": ["transformers", "LlavaForConditionalGeneration"],
            "edit_head": ["model.mgie.edit_head", "EditMapper"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
        }
        (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        logger.info("saved MGIE pipeline to %s", directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> MGIEPipeline:
        """Load a folder written by ``save_pretrained``."""
        from diffusers import EulerAncestralDiscreteScheduler

        from model.mgie.model import build_mgie

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not an MGIE pipeline folder (save_pretrained writes it)")
        config = MGIEConfig.load(config_path)
        resolved = {name: str(directory / value) for name in ("llava_dir", "unet_dir", "vae_dir", "edit_head_dir")
                    if (value := getattr(config, name)) is not None and not Path(value).is_absolute()}
        model = build_mgie(dataclasses.replace(config, **resolved), for_inference=True)
        scheduler = EulerAncestralDiscreteScheduler.from_pretrained(directory / "scheduler")
        return cls(model, scheduler).to(device, dtype)

    # -- the MLLM half ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def express(self, image: Image.Image, instruction: str, max_new_tokens: int | None = None
                ) -> tuple[str, torch.Tensor]:
        """Greedy generation for one image: (expressive instruction, hidden states predicting [IMG0..7] (r, D))."""
        from model.llava import base_llava
        from model.mgie.expressive import clean_description
        from model.mgie.positions import img_hidden_start

        m, cfg = self.model, self.model.config
        llava = base_llava(m.llava)
        prompt = m.processor.generation_prompt(image, instruction)
        device = self.device
        tokenizer = m.processor.tokenizer
        out = llava.generate(
            input_ids=prompt["input_ids"].to(device), attention_mask=prompt["attention_mask"].to(device),
            pixel_values=prompt["clip_pixels"].to(device, llava.dtype), do_sample=False, num_beams=1,
            max_new_tokens=max_new_tokens or cfg.max_new_tokens, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            return_dict_in_generate=True, output_hidden_states=True, pad_token_id=m.processor.pad_token_id,
        )
        sequence = out.sequences[0].tolist()
        # One state per position of the prompt pass, then one per generated token but the last (as the demo).
        hidden = torch.cat([step[-1] for step in out.hidden_states], dim=1)[0]
        p = img_hidden_start(sequence, m.img_token_ids[0], hidden.shape[0], cfg.num_img_tokens)
        generated = tokenizer.decode(sequence[prompt["input_ids"].shape[1]:], skip_special_tokens=False)
        return clean_description(generated, cfg.img_tokens()[0], tokenizer.eos_token), hidden[p:p + cfg.num_img_tokens]

    # -- sampling ---------------------------------------------------------------------------------------------
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
        """Edit ``image`` following ``instruction``. Returns PIL images, a (B, 3, H, W) tensor in [0, 1] for
        output_type='pt', or latents for 'latent'. Arguments left None come from the saved config (``sampling``:
        100 steps, s_T 7.5, s_I 1.5; the size from ``resolution``). The expressive instructions of the call land in
        ``expressive_instructions``."""
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
        expressed = [self.express(im, ins) for im, ins in zip(images, instructions)]
        self.expressive_instructions = [text for text, _ in expressed]
        img_hidden = torch.stack([h for _, h in expressed]).to(device)
        context = m.condition(img_hidden).to(dtype)
        null = m.null_condition(1).to(dtype)
        src = torch.stack([pil_to_signed_unit_range(im, (height, width)) for im in images])
        image_latents = m.vae.encode(src.to(device, m.vae.dtype)).latent_dist.mode().to(dtype)
        latents = self.denoise(image_latents, context, null, None, num_inference_steps, text_guidance_scale,
                               image_guidance_scale, generator)
        if output_type == "latent":
            return latents
        decoded = m.vae.decode(latents.to(m.vae.dtype) / m.vae.config.scaling_factor).sample
        pixels = (decoded.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return pixels
        arrays = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        return [PILImage.fromarray(a) for a in arrays]
