"""SmartEditModel: LLaVA + [IMG] tokens → QFormer → BIM → InstructPix2Pix UNet, with both stages' losses.

    h  = LLaVA(x, c)[IMG positions]              (B, 32, D_llm)
    f  = QFormer(h)                              (B, 77, D_ctx)
    v  = CLIP-ViT patch features of x            (B, 256, D_vis)   (same tower pass as LLaVA's image tokens)
    f'', v' = BIM(f, v)                          (B, 77, D_ctx), (B, C_conv_in, h, w)
    ε̂  = UNet(concat[z_t, E_vae(x)], t, f'') with v' added to conv_in's output

Stage 1 (alignment): CE on the [IMG] tokens + MSE(f, CLIP-text(caption).last_hidden_state); trains the new token
rows and the QFormer. Stage 2 (joint): CE + diffusion MSE 1:1; trains LoRA, new rows, QFormer, BIM and the UNet.
Build with ``build_smartedit(config)`` = ``assemble_smartedit(config, load_components(config))``; pass
``assemble_smartedit`` parts built in memory (benchmarks, tests) to skip loading.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.bim import BidirectionalInteractionModule
from model.config import SmartEditConfig
from model.llava import SmartEditLLaVA, add_img_tokens, num_image_placeholders, wrap_with_lora
from model.processor import SmartEditProcessor
from model.qformer import QFormer
from model.unet import (
    SpatialInjection,
    encode_condition_latents,
    encode_target_latents,
    training_scheduler,
    vae_scale_factor,
    widen_conv_in,
)

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Parameter-name markers of the LLaVA parts that train (peft naming).
_TOKEN_ROWS = "trainable_tokens_delta"
_LORA = "lora_"


class SmartEditModel(nn.Module):
    """Composed SmartEdit model. Frozen parts: LLaVA base weights (vision tower, projector, LLM), VAE, CLIP text."""

    def __init__(
        self,
        config: SmartEditConfig,
        llava: nn.Module,
        qformer: QFormer,
        bim: BidirectionalInteractionModule,
        unet: nn.Module,
        vae: nn.Module,
        processor: SmartEditProcessor,
        null_text_embeds: torch.Tensor,
        text_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.llava = llava
        self.qformer = qformer
        self.bim = bim
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.processor = processor
        self.noise_scheduler = training_scheduler(config.loss.num_train_timesteps)
        self.injection = SpatialInjection(unet)
        self.register_buffer("null_text_embeds", null_text_embeds.detach().float().clone(), persistent=False)
        self.vae.requires_grad_(False)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False)
        self.trainable_parameters(config.stage)

    # -- bookkeeping ------------------------------------------------------------------------------------------
    @property
    def img_token_ids(self) -> list[int]:
        """Token ids of <img_0>…<img_{r-1}> (contiguous)."""
        return list(self.processor.img_token_ids)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD-1.5)."""
        return vae_scale_factor(self.vae)

    def train(self, mode: bool = True) -> SmartEditModel:
        """Frozen encoders stay in eval mode (no dropout/noise) whatever the mode."""
        super().train(mode)
        self.vae.eval()
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return self

    @staticmethod
    def _is_trainable(name: str, stage: int) -> bool:
        if name.startswith("qformer."):
            return True
        if name.startswith("llava."):
            return _TOKEN_ROWS in name or (stage == 2 and _LORA in name)
        return stage == 2 and (name.startswith("bim.") or name.startswith("unet."))

    def trainable_parameters(self, stage: int | None = None, train_bim: bool = True) -> dict[str, nn.Parameter]:
        """Set requires_grad for ``stage`` (default: config.stage) and return the trainable named parameters.
        Stage 1: new token rows, QFormer (+queries). Stage 2: + LoRA, BIM, the full UNet.
        ``train_bim=False`` keeps BIM frozen; with its zero-initialised heads that is exactly "stage 2 without BIM"
        (the official code's first 5k steps)."""
        stage = self.config.stage if stage is None else stage
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        trainable = {}
        for name, param in self.named_parameters():
            flag = self._is_trainable(name, stage) and (train_bim or not name.startswith("bim."))
            param.requires_grad_(flag)
            if flag:
                trainable[name] = param
        return trainable

    def _trainable_keys(self) -> list[str]:
        # Union over both stages, plus persistent buffers of the new modules (BIM's random position matrix).
        keys = [n for n, _ in self.named_parameters() if self._is_trainable(n, 2)]
        for prefix, module in (("qformer.", self.qformer), ("bim.", self.bim), ("unet.", self.unet)):
            keys += [prefix + n for n, _ in module.named_buffers()]
        return keys

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What trains in any stage (LoRA, new token rows, QFormer, BIM, UNet): contiguous tensors, str keys,
        ready for ``safetensors.torch.save_file``."""
        state = self.state_dict(keep_vars=False)
        return {k: state[k].detach().contiguous() for k in self._trainable_keys() if k in state}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load a ``trainable_state_dict``; with ``strict`` a missing or unexpected key is an error naming it."""
        expected = set(self.trainable_state_dict())
        given = set(state_dict)
        if strict and (expected - given or given - expected):
            raise KeyError(
                f"trainable state dict mismatch: missing {sorted(expected - given)[:5]}, "
                f"unexpected {sorted(given - expected)[:5]} (was it saved from a model with another config?)"
            )
        unexpected = given - expected
        if unexpected:
            raise KeyError(f"keys not in this model's trainable set: {sorted(unexpected)[:5]}")
        self.load_state_dict(state_dict, strict=False)

    # -- conditioning -----------------------------------------------------------------------------------------
    def encode_instruction(
        self,
        pixel_values_clip: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        img_token_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """LLaVA pass with teacher-forced [IMG] tokens.

        pixel_values_clip (B, 3, S, S) CLIP-normalised or None (text-only captions); input_ids/attention_mask/
        labels/img_token_mask (B, L). Returns dict(lm_loss scalar, img_hidden (B, r, D_llm),
        patch_features (B, N, D_vis) or None)."""
        if img_token_mask is None:
            ids = self.img_token_ids
            img_token_mask = (input_ids >= ids[0]) & (input_ids <= ids[-1])
        patches = image_tokens = None
        if pixel_values_clip is not None:
            patches, image_tokens = SmartEditLLaVA.encode_image(self.llava, pixel_values_clip)
        out = SmartEditLLaVA.forward(
            self.llava, input_ids, attention_mask, img_token_mask, self.config.num_img_tokens, image_tokens, labels
        )
        out["patch_features"] = patches
        return out

    def condition(
        self, img_hidden: torch.Tensor, patch_features: torch.Tensor | None, latent_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """QFormer + BIM: (B, r, D_llm), (B, N, D_vis) → context f'' (B, 77, D_ctx), spatial v' (B, C, h, w) | None."""
        f = self.qformer(img_hidden)
        if patch_features is None:
            if self.config.bim.variant != "plain":
                raise ValueError("BIM needs the CLIP patch features: pass clip_pixels")
            return f, None
        return self.bim(f, patch_features, latent_size)

    @torch.no_grad()
    def clip_text_embeds(self, clip_input_ids: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP text last_hidden_state: (B, 77) → (B, 77, D_ctx) in fp32."""
        if self.text_encoder is None:
            raise ValueError("this model was built without a CLIP text encoder (config.clip_text_dir)")
        return self.text_encoder(input_ids=clip_input_ids).last_hidden_state.float()

    def predict_noise(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        condition_latents: torch.Tensor,
        context: torch.Tensor,
        spatial: torch.Tensor | None,
    ) -> torch.Tensor:
        """ε̂ = UNet(concat[z_t, c_img], t, context) with v' added after conv_in. Latents (B, 4, h, w)."""
        sample = torch.cat([noisy_latents, condition_latents.to(noisy_latents.dtype)], dim=1)
        with self.injection.active(spatial):
            return self.unet(sample, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    # -- losses -----------------------------------------------------------------------------------------------
    def diffusion_loss(
        self,
        batch: dict[str, torch.Tensor],
        context: torch.Tensor,
        spatial: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """ε-prediction MSE over the rows given (callers pass edit rows only), with InstructPix2Pix CFG dropout:
        r ~ U(0,1); context → CLIP('') if r < text_drop_below; condition latent → 0 if r in image_drop_range."""
        src, tgt = batch["src_pixels"], batch["tgt_pixels"]
        device = context.device
        with torch.no_grad():
            target = encode_target_latents(self.vae, tgt, generator).float()
            cond = encode_condition_latents(self.vae, src).float()
        b = target.shape[0]
        noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator,
                                  device=device)
        noisy = self.noise_scheduler.add_noise(target, noise, timesteps)
        if self.training:
            context, cond = self.cfg_dropout(context, cond, torch.rand(b, generator=generator, device=device))
        pred = self.predict_noise(noisy, timesteps, cond, context, spatial)
        return F.mse_loss(pred.float(), noise.float())

    def cfg_dropout(
        self, context: torch.Tensor, condition_latents: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InstructPix2Pix dropout given r (B,) ~ U(0,1): context (B, 77, D) → CLIP('') where r < text_drop_below;
        condition latents (B, 4, h, w) → 0 where low <= r < high. Both for r in [low, text_drop_below)."""
        b = r.shape[0]
        drop_text = (r < self.config.loss.text_drop_below).view(b, 1, 1)
        context = torch.where(drop_text, self.null_text_embeds.to(context.dtype).expand_as(context), context)
        lo, hi = self.config.loss.image_drop_range
        keep_image = ~((r >= lo) & (r < hi))
        return context, condition_latents * keep_image.view(b, 1, 1, 1).to(condition_latents.dtype)

    def forward(
        self, batch: dict[str, torch.Tensor], stage: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Training losses. Stage 2 returns dict(loss, lm_loss, diffusion_loss): the diffusion MSE is averaged over
        the edit rows only (``is_edit``); VQA rows train the LM only. Stage 1 returns dict(loss, lm_loss,
        align_loss) with align = MSE(QFormer(h), CLIP text of ``clip_text_input_ids``)."""
        stage = self.config.stage if stage is None else stage
        enc = self.encode_instruction(
            batch.get("clip_pixels"), batch["input_ids"], batch["attention_mask"], batch.get("img_token_mask"),
            batch.get("labels"),
        )
        lm_loss = enc["lm_loss"]
        if stage == 1:
            f = self.qformer(enc["img_hidden"])
            align = F.mse_loss(f.float(), self.clip_text_embeds(batch["clip_text_input_ids"]))
            loss = self.config.loss.lm_loss_weight * lm_loss + self.config.loss.align_loss_weight * align
            return {"loss": loss, "lm_loss": lm_loss.detach(), "align_loss": align.detach()}
        is_edit = batch["is_edit"].to(torch.bool)
        if bool(is_edit.any()):
            rows = is_edit.nonzero(as_tuple=True)[0]
            edit_batch = {k: batch[k][rows] for k in ("src_pixels", "tgt_pixels")}
            size = edit_batch["src_pixels"].shape[-1] // self.vae_scale_factor
            patches = enc["patch_features"][rows] if enc["patch_features"] is not None else None
            context, spatial = self.condition(enc["img_hidden"][rows], patches, (size, size))
            diff = self.diffusion_loss(edit_batch, context, spatial, generator)
        else:
            # Keep the graph connected (DDP needs every trainable parameter to appear) but add nothing.
            diff = sum(p.sum() for p in self.qformer.parameters()) * 0.0
        loss = self.config.loss.lm_loss_weight * lm_loss + self.config.loss.diffusion_loss_weight * diff
        return {"loss": loss, "lm_loss": lm_loss.detach(), "diffusion_loss": diff.detach()}


# ---------------------------------------------------------------------------------------------------------------
def _null_text_embeds(text_encoder: nn.Module, text_tokenizer) -> torch.Tensor:
    ids = text_tokenizer("", padding="max_length", max_length=text_tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return text_encoder(input_ids=ids.to(text_encoder.device)).last_hidden_state.float()


def build_smartedit(config: SmartEditConfig, for_inference: bool = False) -> SmartEditModel:
    """Build the complete model from ``config``: the tiny preset in code (unless its directories are set), real
    presets from local directories. ``for_inference`` skips peft (merged checkpoints) and gradient checkpointing."""
    return assemble_smartedit(config, load_components(config), for_inference=for_inference)


def load_components(config: SmartEditConfig) -> dict[str, Any]:
    """The pretrained parts ``assemble_smartedit`` takes: ``llava``, ``tokenizer``, ``image_processor``, ``unet``,
    ``vae`` and optionally ``text_encoder`` + ``text_tokenizer`` (needed unless ``null_text_embeds_path`` is set).
    The tiny preset builds them in code (unless its directories are set); others load from local directories."""
    from model.tiny import build_tiny_components

    config.check_directories()
    if config.is_tiny and config.llava_dir is None:
        return build_tiny_components(config)
    return _load_pretrained(config)


def assemble_smartedit(config: SmartEditConfig, parts: dict[str, Any], for_inference: bool = False) -> SmartEditModel:
    """Assemble the model from loaded ``parts`` (see ``load_components``): add the [IMG] tokens, widen the UNet's
    conv_in, wrap LoRA, create (or load) the QFormer and BIM, compute the null text context."""
    missing = sorted({"llava", "tokenizer", "image_processor", "unet", "vae"} - set(parts))
    if missing:
        raise ValueError(f"assemble_smartedit: parts {missing} are missing; load_components(config) returns them all")
    llava, tokenizer, image_processor = parts["llava"], parts["tokenizer"], parts["image_processor"]
    img_ids = add_img_tokens(tokenizer, config)
    unet = widen_conv_in(parts["unet"])
    ctx_dim = unet.config.cross_attention_dim
    if config.qformer.hidden_size != ctx_dim:
        raise ValueError(f"qformer.hidden_size={config.qformer.hidden_size} must equal the UNet's cross_attention_dim "
                         f"{ctx_dim} (SD-1.5: 768)")
    # Everything initialised here (new rows, LoRA, QFormer, BIM) depends only on config.seed, not on global RNG.
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        if llava.get_input_embeddings().weight.shape[0] < len(tokenizer):
            llava.resize_token_embeddings(len(tokenizer))
        llava.requires_grad_(False)
        if config.lora is not None and not for_inference:
            llava = wrap_with_lora(llava, config, img_ids)
        llava_cfg = SmartEditLLaVA.inner(llava).config
        llm_width = llava_cfg.text_config.hidden_size
        vision_width = llava_cfg.vision_config.hidden_size
        if config.qformer_dir is not None:
            qformer = QFormer.from_pretrained(config.qformer_dir)
        else:
            qformer = QFormer(config.qformer, llm_width)
        if config.bim_dir is not None:
            bim = BidirectionalInteractionModule.from_pretrained(config.bim_dir)
        else:
            bim = BidirectionalInteractionModule(config.bim, ctx_dim, vision_width, unet.config.block_out_channels[0])
    text_encoder, text_tokenizer = parts.get("text_encoder"), parts.get("text_tokenizer")
    if config.null_text_embeds_path is not None:
        from safetensors.torch import load_file

        null = load_file(config.null_text_embeds_path)["null_text_embeds"]
    elif text_encoder is None or text_tokenizer is None:
        raise ValueError("assemble_smartedit: parts need 'text_encoder' and 'text_tokenizer' (CLIP text) unless "
                         "config.null_text_embeds_path is set")
    else:
        null = _null_text_embeds(text_encoder, text_tokenizer)
    if null.shape[-1] != ctx_dim:
        raise ValueError(f"CLIP text width {null.shape[-1]} != UNet cross_attention_dim {ctx_dim}")
    processor = SmartEditProcessor(
        tokenizer, image_processor, config, llava_cfg.image_token_id, num_image_placeholders(llava_cfg),
        text_tokenizer,
    )
    if config.gradient_checkpointing and not for_inference:
        # Non-reentrant: the frozen base has no grad-requiring inputs of its own (only LoRA / token deltas do).
        SmartEditLLaVA.inner(llava).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        unet.enable_gradient_checkpointing()
    model = SmartEditModel(config, llava, qformer, bim, unet, parts["vae"], processor, null, text_encoder)
    if for_inference:
        model.eval().requires_grad_(False)
    return model


def _load_pretrained(config: SmartEditConfig) -> dict[str, Any]:
    """Load every pretrained part from its local directory (real presets or saved tiny/pipeline dirs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPTextModel, LlavaForConditionalGeneration

    llm_dtype = _DTYPES[config.llm_dtype]
    parts: dict[str, Any] = {
        "llava": LlavaForConditionalGeneration.from_pretrained(config.llava_dir, dtype=llm_dtype).eval(),
        "tokenizer": AutoTokenizer.from_pretrained(config.tokenizer_dir or config.llava_dir),
        "image_processor": AutoImageProcessor.from_pretrained(config.llava_dir),
        "unet": UNet2DConditionModel.from_pretrained(config.unet_dir),
        "vae": AutoencoderKL.from_pretrained(config.vae_dir, torch_dtype=_DTYPES[config.vae_dtype]).eval(),
    }
    if config.clip_text_dir is not None:
        parts["text_encoder"] = CLIPTextModel.from_pretrained(config.clip_text_dir).eval()
        parts["text_tokenizer"] = AutoTokenizer.from_pretrained(config.clip_text_dir)
    return parts


def save_null_text_embeds(model: SmartEditModel, path: str | Path) -> None:
    """Write CLIP('') context (1, 77, D) so inference needs no text encoder."""
    from safetensors.torch import save_file

    save_file({"null_text_embeds": model.null_text_embeds.detach().contiguous().cpu()}, str(path))
