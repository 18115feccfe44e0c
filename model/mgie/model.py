"""MGIEModel: LLaVA + 8 [IMG] tokens → edit head → InstructPix2Pix UNet, trained with CE + 0.5 · diffusion MSE.

    h   = LLaVA(x, prompt + "{summary} [IMG0]…[IMG7]</s>") last layer (after the final norm), teacher-forced
    c   = EditMapper(h[positions predicting IMG0..7], embed([IMG0..7]))      (B, 77, D_ctx)
    ε̂   = UNet(concat[z_t, E_vae(x)], t, c)

Trainable (apple/ml-mgie ``mgie_train.py``): embed_tokens and lm_head (whole matrices, or only the [IMG] rows with
``token_rows="new_rows"``), the edit head and the whole UNet. The LLM blocks, vision tower, projector and VAE are
frozen; no LoRA. The LLaVA pass, image encoding, UNet widening and VAE latents are SmartEdit's code
(model/llava.py, model/unet.py). Build with ``build_mgie(config)``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.llava import add_img_tokens, base_llava, encode_image, forward_with_img_tokens, num_image_placeholders
from model.mgie.config import MGIEConfig
from model.mgie.edit_head import EditMapper
from model.mgie.positions import img_hidden_start
from model.mgie.processor import MGIEProcessor
from model.unet import encode_condition_latents, encode_target_latents, training_scheduler, vae_scale_factor, widen_conv_in

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKEN_MATRICES = ("embed_tokens", "lm_head")
_TOKEN_ROWS = "trainable_tokens_delta"  # peft TrainableTokens parameter name


class MGIEModel(nn.Module):
    """Composed MGIE model. ``forward(batch)`` returns dict(loss, lm_loss, diffusion_loss)."""

    def __init__(self, config: MGIEConfig, llava: nn.Module, edit_head: EditMapper, unet: nn.Module, vae: nn.Module,
                 processor: MGIEProcessor) -> None:
        super().__init__()
        self.config = config
        self.llava = llava
        self.edit_head = edit_head
        self.unet = unet
        self.vae = vae
        self.processor = processor
        self.noise_scheduler = training_scheduler(config.loss.num_train_timesteps)
        self.vae.requires_grad_(False)
        self.trainable_parameters()

    # -- bookkeeping ------------------------------------------------------------------------------------------
    @property
    def img_token_ids(self) -> list[int]:
        """Token ids of [IMG0]…[IMG7] (contiguous)."""
        return list(self.processor.img_token_ids)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    def train(self, mode: bool = True) -> MGIEModel:
        """The frozen VAE stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    def _is_trainable(self, name: str) -> bool:
        if name.startswith(("edit_head.", "unet.")):
            return True
        if not name.startswith("llava."):
            return False
        if self.config.token_rows == "new_rows":
            return _TOKEN_ROWS in name
        return any(f".{m}." in name for m in _TOKEN_MATRICES)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Set requires_grad (embed_tokens + lm_head or their [IMG] rows, edit head, UNet) and return them."""
        trainable = {}
        for name, param in self.named_parameters():
            flag = self._is_trainable(name)
            param.requires_grad_(flag)
            if flag:
                trainable[name] = param
        return trainable

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What trains, as contiguous tensors (ready for safetensors)."""
        state = self.state_dict(keep_vars=False)
        return {n: state[n].detach().contiguous() for n, _ in self.named_parameters() if self._is_trainable(n)}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load a ``trainable_state_dict``; a missing (strict) or unexpected key is an error naming it."""
        expected, given = set(self.trainable_state_dict()), set(state_dict)
        if given - expected or (strict and expected - given):
            raise KeyError(f"MGIE trainable state dict mismatch: missing {sorted(expected - given)[:5]}, unexpected "
                           f"{sorted(given - expected)[:5]} (saved with another token_rows or model size?)")
        self.load_state_dict(state_dict, strict=False)

    # -- conditioning -----------------------------------------------------------------------------------------
    def token_embeds(self) -> torch.Tensor:
        """Current embeddings of [IMG0..7], (r, D_llm) (the official ``embed_tokens.weight[-8:]``)."""
        embed = base_llava(self.llava).get_input_embeddings()
        ids = torch.tensor(self.img_token_ids, device=self.edit_head.query.device)
        return embed(ids)

    def null_condition(self, batch_size: int = 1) -> torch.Tensor:
        """The learned null context: the edit head on zero hidden states, (B, 77, D_ctx)."""
        return self.edit_head.null(self.token_embeds(), batch_size)

    def predicting_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) mask of the hidden positions predicting [IMG0..7] in teacher-forced rows (positions.py rule)."""
        first = self.img_token_ids[0]
        r = self.config.num_img_tokens
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, row in enumerate(input_ids.tolist()):
            p = img_hidden_start(row, first, len(row), r)
            mask[i, p:p + r] = True
        return mask

    def encode_instruction(self, clip_pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Teacher-forced LLaVA pass: dict(img_hidden (B, r, D_llm), lm_loss scalar (0 without labels))."""
        _, image_tokens = encode_image(self.llava, clip_pixels)
        return forward_with_img_tokens(self.llava, input_ids, attention_mask, self.predicting_mask(input_ids),
                                      self.config.num_img_tokens, image_tokens, labels)

    def condition(self, img_hidden: torch.Tensor) -> torch.Tensor:
        """Edit head: (B, r, D_llm) → (B, 77, D_ctx)."""
        return self.edit_head(img_hidden, self.token_embeds())

    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, condition_latents: torch.Tensor,
                      context: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ = UNet(concat[z_t, c_img], t, context). MGIE has no spatial injection (``spatial`` must be None)."""
        if spatial is not None:
            raise ValueError("MGIE has no spatial features (that is SmartEdit's BIM); pass spatial=None")
        sample = torch.cat([noisy_latents, condition_latents.to(noisy_latents.dtype)], dim=1)
        return self.unet(sample, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    # -- losses -----------------------------------------------------------------------------------------------
    def cfg_dropout(self, context: torch.Tensor, condition_latents: torch.Tensor, r: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InstructPix2Pix dropout given r (B,) ~ U(0,1): context → learned null where r < text_drop_below;
        condition latents → 0 where low <= r < high (official: DROP = 0.05, ``prob < 2·DROP`` and [DROP, 3·DROP))."""
        b = r.shape[0]
        null = self.null_condition(b).to(context.dtype)
        context = torch.where((r < self.config.loss.text_drop_below).view(b, 1, 1), null, context)
        lo, hi = self.config.loss.image_drop_range
        keep_image = ~((r >= lo) & (r < hi))
        return context, condition_latents * keep_image.view(b, 1, 1, 1).to(condition_latents.dtype)

    def diffusion_loss(self, src_pixels: torch.Tensor, tgt_pixels: torch.Tensor, context: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """ε-prediction MSE (mean over every element) with CFG dropout in training mode."""
        with torch.no_grad():
            target = encode_target_latents(self.vae, tgt_pixels, generator).float()
            cond = encode_condition_latents(self.vae, src_pixels).float()
        b, device = target.shape[0], context.device
        noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator,
                                  device=device)
        noisy = self.noise_scheduler.add_noise(target, noise, timesteps)
        if self.training:
            context, cond = self.cfg_dropout(context, cond, torch.rand(b, generator=generator, device=device))
        pred = self.predict_noise(noisy, timesteps, cond, context.to(self.unet.dtype))
        return F.mse_loss(pred.float(), noise.float())

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        """loss = lm_loss_weight · CE(answer) + diffusion_loss_weight · MSE (official: 1 and 0.5)."""
        enc = self.encode_instruction(batch["clip_pixels"], batch["input_ids"], batch["attention_mask"],
                                      batch.get("labels"))
        context = self.condition(enc["img_hidden"])
        diff = self.diffusion_loss(batch["src_pixels"], batch["tgt_pixels"], context, generator)
        loss = self.config.loss.lm_loss_weight * enc["lm_loss"] + self.config.loss.diffusion_loss_weight * diff
        return {"loss": loss, "lm_loss": enc["lm_loss"].detach(), "diffusion_loss": diff.detach()}


# ---------------------------------------------------------------------------------------------------------------
def build_tiny_mgie_components(config: MGIEConfig) -> dict[str, Any]:
    """Tiny random LLaVA, 8-channel UNet (context width = the edit head's) and VAE, seeded by ``config.seed``."""
    from model.llava import build_tiny_llava
    from model.unet import build_tiny_unet, build_tiny_vae

    llava, tokenizer, image_processor = build_tiny_llava(config.seed)
    return {"llava": llava, "tokenizer": tokenizer, "image_processor": image_processor,
            "unet": build_tiny_unet(config.edit_head.hidden_size, config.seed + 2),
            "vae": build_tiny_vae(config.seed + 3).eval()}


def _load_components(config: MGIEConfig) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    return {
        "llava": LlavaForConditionalGeneration.from_pretrained(config.llava_dir, dtype=_DTYPES[config.llm_dtype]).eval(),
        "tokenizer": AutoTokenizer.from_pretrained(config.tokenizer_dir or config.llava_dir),
        "image_processor": AutoImageProcessor.from_pretrained(config.llava_dir),
        "unet": UNet2DConditionModel.from_pretrained(config.unet_dir),
        "vae": AutoencoderKL.from_pretrained(config.vae_dir, torch_dtype=_DTYPES[config.vae_dtype]).eval(),
    }


def build_mgie(config: MGIEConfig, for_inference: bool = False) -> MGIEModel:
    """The complete model from ``config`` (tiny in code unless its directories are set; real presets from local
    directories). ``for_inference`` skips peft and gradient checkpointing and freezes everything."""
    config.check_directories()
    parts = build_tiny_mgie_components(config) if config.is_tiny and config.llava_dir is None else _load_components(config)
    llava, tokenizer, image_processor = parts["llava"], parts["tokenizer"], parts["image_processor"]
    img_ids = add_img_tokens(tokenizer, config)
    unet = widen_conv_in(parts["unet"])
    ctx_dim = unet.config.cross_attention_dim
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)  # new rows and the edit head depend only on config.seed
        if llava.get_input_embeddings().weight.shape[0] < len(tokenizer):
            llava.resize_token_embeddings(len(tokenizer))
        llava.requires_grad_(False)
        llm_width = llava.config.text_config.hidden_size
        if config.edit_head_dir is not None:
            edit_head = EditMapper.from_pretrained(config.edit_head_dir)
        else:
            edit_head = EditMapper(config.edit_head, llm_width, ctx_dim)
    if (edit_head.llm_hidden_size, edit_head.context_dim) != (llm_width, ctx_dim):
        raise ValueError(f"edit head maps {edit_head.llm_hidden_size}→{edit_head.context_dim} but the LLM is "
                         f"{llm_width} wide and the UNet's cross_attention_dim is {ctx_dim}")
    if not for_inference:
        if config.token_rows == "new_rows":
            from peft import TrainableTokensConfig, get_peft_model

            llava = get_peft_model(llava, TrainableTokensConfig(target_modules=list(_TOKEN_MATRICES),
                                                                token_indices=list(img_ids)))
        else:
            # The two trained matrices keep fp32 master weights (bf16 autocast runs the maths on GPU).
            llava.get_input_embeddings().float()
            llava.get_output_embeddings().float()
        if config.gradient_checkpointing:
            base_llava(llava).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            unet.enable_gradient_checkpointing()
    llava_cfg = base_llava(llava).config
    processor = MGIEProcessor(tokenizer, image_processor, config, llava_cfg.image_token_id,
                              num_image_placeholders(llava_cfg))
    model = MGIEModel(config, llava, edit_head, unet, parts["vae"], processor)
    if for_inference:
        model.eval().requires_grad_(False)
    return model
