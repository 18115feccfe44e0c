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
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.bim import BidirectionalInteractionModule
from model.config import SmartEditConfig
from model.llava import (
    add_img_tokens,
    base_llava,
    encode_image,
    forward_with_img_tokens,
    num_image_placeholders,
    use_projector,
    wrap_with_lora,
)
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


class IncompatibleKeys(NamedTuple):
    """Result of ``SmartEditModel.load_trainable_state_dict``: sorted key lists."""

    missing: list[str]
    unexpected: list[str]

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
        bim: BidirectionalInteractionModule | None,
        unet: nn.Module | None,
        vae: nn.Module | None,
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
        # Stage-1 (alignment) builds have no UNet, VAE or BIM: nothing of the diffusion half is used there.
        self.injection = SpatialInjection(unet) if unet is not None else None
        self.register_buffer("null_text_embeds", null_text_embeds.detach().float().clone(), persistent=False)
        for frozen in (self.vae, self.text_encoder):
            if frozen is not None:
                frozen.requires_grad_(False)
        self.set_trainable(config.stage)

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
        for frozen in (self.vae, self.text_encoder):
            if frozen is not None:
                frozen.eval()
        return self

    @staticmethod
    def _is_trainable(name: str, stage: int) -> bool:
        if name.startswith("qformer."):
            return True
        if name.startswith("llava."):
            return _TOKEN_ROWS in name or (stage == 2 and _LORA in name)
        return stage == 2 and (name.startswith("bim.") or name.startswith("unet."))

    def set_trainable(self, stage: int | None = None, train_bim: bool = True) -> None:
        """Freeze / unfreeze for ``stage`` (default: config.stage): set ``requires_grad`` on every parameter.
        Stage 1: new token rows, QFormer (+queries). Stage 2: + LoRA, BIM, the full UNet.
        ``train_bim=False`` keeps BIM frozen; with its zero-initialised heads that is exactly "stage 2 without BIM"."""
        stage = self.config.stage if stage is None else stage
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        for name, param in self.named_parameters():
            param.requires_grad_(self._is_trainable(name, stage) and (train_bim or not name.startswith("bim.")))

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The named parameters that currently train (``requires_grad``); changes nothing (see ``set_trainable``)."""
        return {name: param for name, param in self.named_parameters() if param.requires_grad}

    def _trainable_keys(self) -> list[str]:
        # Union over both stages, plus persistent buffers of the new modules (BIM's random position matrix).
        keys = [n for n, _ in self.named_parameters() if self._is_trainable(n, 2)]
        for prefix, module in (("qformer.", self.qformer), ("bim.", self.bim), ("unet.", self.unet)):
            if module is not None:
                keys += [prefix + n for n, _ in module.named_buffers()]
        return keys

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What trains in any stage (LoRA, new token rows, QFormer, BIM, UNet): contiguous tensors, str keys,
        ready for ``safetensors.torch.save_file``."""
        state = self.state_dict(keep_vars=False)
        return {k: state[k].detach().contiguous() for k in self._trainable_keys() if k in state}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> IncompatibleKeys:
        """Load (part of) a ``trainable_state_dict``; return the keys this model expected but did not get
        (``missing``) and the given keys it has no place for (``unexpected``), as torch's ``load_state_dict`` does.
        ``strict``: either list non-empty is a KeyError naming the keys, and nothing is loaded. Not strict: the
        keys both sides have are loaded and the caller decides what the two lists mean (a stage-1 checkpoint
        holds no LoRA, BIM or UNet). A shape mismatch is always an error."""
        expected = set(self.trainable_state_dict())
        given = set(state_dict)
        keys = IncompatibleKeys(sorted(expected - given), sorted(given - expected))
        if strict and (keys.missing or keys.unexpected):
            raise KeyError(
                f"trainable state dict mismatch: missing {keys.missing[:5]}, unexpected {keys.unexpected[:5]} "
                f"(was it saved from a model with another config?)"
            )
        self.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
        return keys

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
            patches, image_tokens = encode_image(self.llava, pixel_values_clip)
        out = forward_with_img_tokens(
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
    presets from local directories. ``for_inference`` skips peft (merged checkpoints) and gradient checkpointing.
    A stage-1 training build (``config.stage == 1``) has no UNet, VAE or BIM: alignment never uses them."""
    diffusion = _has_diffusion(config, for_inference)
    # Loading must not move the global RNG (the tiny builders seed it): the recipes seed it per rank afterwards.
    with torch.random.fork_rng():
        parts = load_components(config, diffusion=diffusion)
    return assemble_smartedit(config, parts, for_inference=for_inference)


def _has_diffusion(config: SmartEditConfig, for_inference: bool) -> bool:
    return config.stage == 2 or for_inference


def load_components(config: SmartEditConfig, diffusion: bool = True) -> dict[str, Any]:
    """The pretrained parts ``assemble_smartedit`` takes: ``llava``, ``tokenizer``, ``image_processor``, ``unet``,
    ``vae`` and optionally ``text_encoder`` + ``text_tokenizer`` (needed unless ``null_text_embeds_path`` is set).
    The tiny preset builds them in code (unless its directories are set); others load from local directories.
    ``diffusion=False`` (stage-1 alignment) skips loading the UNet and the VAE."""
    from model.tiny import build_tiny_components

    config.check_directories()
    if config.is_tiny and config.llava_dir is None:
        return build_tiny_components(config)
    return _load_pretrained(config, diffusion=diffusion)


def assemble_smartedit(config: SmartEditConfig, parts: dict[str, Any], for_inference: bool = False) -> SmartEditModel:
    """Assemble the model from loaded ``parts`` (see ``load_components``): add the [IMG] tokens, widen the UNet's
    conv_in, wrap LoRA, create (or load) the QFormer and BIM, compute the null text context. A stage-1 training
    config needs (and uses) no ``unet`` or ``vae``."""
    diffusion = _has_diffusion(config, for_inference)
    needed = {"llava", "tokenizer", "image_processor"} | ({"unet", "vae"} if diffusion else set())
    missing = sorted(needed - set(parts))
    if missing:
        raise ValueError(f"assemble_smartedit: parts {missing} are missing; load_components(config) returns them all")
    llava, tokenizer, image_processor = parts["llava"], parts["tokenizer"], parts["image_processor"]
    llava = use_projector(llava, config.projector)
    img_ids = add_img_tokens(tokenizer, config)
    unet = widen_conv_in(parts["unet"]) if diffusion else None
    text_encoder, text_tokenizer = parts.get("text_encoder"), parts.get("text_tokenizer")
    if unet is not None:
        ctx_dim, ctx_what = unet.config.cross_attention_dim, "the UNet's cross_attention_dim"
    elif text_encoder is None:
        raise ValueError("assemble_smartedit: stage 1 needs parts 'text_encoder' and 'text_tokenizer' (CLIP text: "
                         "the alignment target)")
    else:
        ctx_dim, ctx_what = text_encoder.config.hidden_size, "the CLIP text width (the stage-1 target)"
    if config.qformer.hidden_size != ctx_dim:
        raise ValueError(f"qformer.hidden_size={config.qformer.hidden_size} must equal {ctx_what} {ctx_dim} "
                         f"(SD-1.5 / CLIP-L/14: 768)")
    # Everything initialised here (new rows, LoRA, QFormer, BIM) depends only on config.seed, not on global RNG.
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        if llava.get_input_embeddings().weight.shape[0] < len(tokenizer):
            llava.resize_token_embeddings(len(tokenizer))
        llava.requires_grad_(False)
        if config.lora is not None and not for_inference:
            llava = wrap_with_lora(llava, config, img_ids)
        llava_cfg = base_llava(llava).config
        llm_width = llava_cfg.text_config.hidden_size
        vision_width = llava_cfg.vision_config.hidden_size
        if config.qformer_dir is not None:
            qformer = QFormer.from_pretrained(config.qformer_dir)
        else:
            qformer = QFormer(config.qformer, llm_width)
        if unet is None:
            bim = None
        elif config.bim_dir is not None:
            bim = BidirectionalInteractionModule.from_pretrained(config.bim_dir)
        else:
            bim = BidirectionalInteractionModule(config.bim, ctx_dim, vision_width, unet.config.block_out_channels[0])
    if config.null_text_embeds_path is not None:
        from safetensors.torch import load_file

        null = load_file(config.null_text_embeds_path)["null_text_embeds"]
    elif text_encoder is None or text_tokenizer is None:
        raise ValueError("assemble_smartedit: parts need 'text_encoder' and 'text_tokenizer' (CLIP text) unless "
                         "config.null_text_embeds_path is set")
    else:
        null = _null_text_embeds(text_encoder, text_tokenizer)
    if null.shape[-1] != ctx_dim:
        raise ValueError(f"CLIP text width {null.shape[-1]} != {ctx_what} {ctx_dim}")
    processor = SmartEditProcessor(
        tokenizer, image_processor, config, llava_cfg.image_token_id, num_image_placeholders(llava_cfg),
        text_tokenizer,
    )
    if config.gradient_checkpointing and not for_inference:
        # Non-reentrant: the frozen base has no grad-requiring inputs of its own (only LoRA / token deltas do).
        base_llava(llava).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if unet is not None:
            unet.enable_gradient_checkpointing()
    vae = parts["vae"] if diffusion else None
    model = SmartEditModel(config, llava, qformer, bim, unet, vae, processor, null, text_encoder)
    if for_inference:
        model.eval().requires_grad_(False)
    return model


def _load_pretrained(config: SmartEditConfig, diffusion: bool = True) -> dict[str, Any]:
    """Load every pretrained part from its local directory (real presets or saved tiny/pipeline dirs);
    ``diffusion=False`` (stage-1 alignment) skips the UNet and the VAE."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPTextModel

    from model.llava import load_llava

    llm_dtype = _DTYPES[config.llm_dtype]
    parts: dict[str, Any] = {
        "llava": load_llava(config.llava_dir, llm_dtype, config.projector),
        "tokenizer": AutoTokenizer.from_pretrained(config.tokenizer_dir or config.llava_dir),
        "image_processor": AutoImageProcessor.from_pretrained(config.llava_dir),
    }
    if diffusion:
        parts["unet"] = UNet2DConditionModel.from_pretrained(config.unet_dir)
        parts["vae"] = AutoencoderKL.from_pretrained(config.vae_dir, torch_dtype=_DTYPES[config.vae_dtype]).eval()
    if config.clip_text_dir is not None:
        parts["text_encoder"] = CLIPTextModel.from_pretrained(config.clip_text_dir).eval()
        parts["text_tokenizer"] = AutoTokenizer.from_pretrained(config.clip_text_dir)
    return parts


def save_null_text_embeds(model: SmartEditModel, path: str | Path) -> None:
    """Write CLIP('') context (1, 77, D) so inference needs no text encoder."""
    from safetensors.torch import save_file

    save_file({"null_text_embeds": model.null_text_embeds.detach().contiguous().cpu()}, str(path))
