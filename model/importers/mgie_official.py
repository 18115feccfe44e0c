"""``mgie-official``: the released MGIE-7B weights (apple/ml-mgie ``mgie_7b/``) → an MGIEPipeline folder.

Layout read (written by the official ``extract_ckpt.ipynb``; fp16 tensors, loaded with ``weights_only=True``)::

    mgie_7b/mllm.pt   model.embed_tokens.weight (32011 × 4096), lm_head.weight (32011 × 4096),
                      edit_head.{llm2hid,query,mapper.*,hid2feat}.*, emb (the [IMG] embeddings the demo feeds the
                      head; it equals the [IMG] rows of embed_tokens)
    mgie_7b/unet.pt   the full 8-channel SD-1.5 UNet, diffusers names

The LLaVA-7B v1 base (Hugging Face format: ``--llava``) supplies the frozen LLM, vision tower and projector; an
SD-1.5 / InstructPix2Pix diffusers folder (``--sd``, with ``unet/`` for the config and ``vae/``) supplies the VAE.
Token rows: the official vocabulary is Vicuna's 32000 tokens, then ``<im_patch> <im_start> <im_end>``, then
[IMG0..7] from id 32003 (``--base-vocab``, ``--first-img-id``). The Vicuna rows and the [IMG] rows are copied to
the same tokens in the Hugging Face vocabulary; the three LLaVA-v1 image-marker rows are dropped (the HF model
places image features with its own ``<image>`` token). Every key is either mapped or dropped with a reason, and
every target tensor is checked for name and shape (model/importers/mapping.py); anything else is an error naming
the key and the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from model.importers.mapping import KeyMapping, MappingReport, load_weights, shapes_of

logger = logging.getLogger(__name__)

DESCRIPTION = "MGIE-7B release (mgie_7b/mllm.pt + unet.pt) → MGIEPipeline folder"
EMBED, LM_HEAD, EDIT_HEAD, EMB = "model.embed_tokens.weight", "lm_head.weight", "edit_head.", "emb"
NUM_IMG_TOKENS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llava", required=True, help="LLaVA-7B v1 in Hugging Face format (LlavaForConditionalGeneration)")
    parser.add_argument("--sd", required=True, help="diffusers SD-1.5 or InstructPix2Pix folder (unet/ config, vae/)")
    parser.add_argument("--base-vocab", type=int, default=32000, help="rows shared with the base vocabulary (32000)")
    parser.add_argument("--first-img-id", type=int, default=32003, help="official id of [IMG0] (32003)")
    parser.add_argument("--num-heads", type=int, default=4, help="edit-head attention heads (not in the weights; 4)")
    parser.add_argument("--llm-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))


def edit_head_config(state: dict[str, Any], num_heads: int):
    """EditHeadConfig read off the official edit-head tensors (``edit_head.`` prefix removed)."""
    from model.mgie.config import EditHeadConfig

    def layers(kind: str) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(f"mapper.{kind}.layers.")})

    for key in ("llm2hid.weight", "query", "mapper.encoder.layers.0.linear1.weight"):
        if key not in state:
            raise KeyError(f"required key 'edit_head.{key}' is missing (is this mgie_7b/mllm.pt?)")
    return EditHeadConfig(hidden_size=int(state["llm2hid.weight"].shape[0]), num_heads=num_heads,
                          num_encoder_layers=layers("encoder"), num_decoder_layers=layers("decoder"),
                          feedforward_size=int(state["mapper.encoder.layers.0.linear1.weight"].shape[0]),
                          num_queries=int(state["query"].shape[1]))


def import_checkpoint(source: Path | str, out: Path | str, llava: str, sd: str, base_vocab: int = 32000,
                      first_img_id: int = 32003, num_heads: int = 4, llm_dtype: str = "bfloat16") -> MappingReport:
    """Convert ``source`` (an mgie_7b folder) into an MGIEPipeline folder at ``out``; returns the mapping report."""
    import torch

    from model.llava import base_llava
    from model.mgie.config import MGIEConfig
    from model.mgie.edit_head import EditMapper
    from model.mgie.model import build_mgie
    from model.mgie.pipeline import MGIEPipeline

    source, out = Path(source), Path(out)
    mllm_path, unet_path = source / "mllm.pt", source / "unet.pt"
    report = MappingReport("mgie-official")
    mllm = KeyMapping(load_weights(mllm_path), str(mllm_path))
    unet = KeyMapping(load_weights(unet_path), str(unet_path))

    # edit head: renamed 1:1, checked against the head its tensors describe (built on the meta device)
    mllm.move_prefix(EDIT_HEAD, "")
    head_cfg = edit_head_config(mllm.target, num_heads)
    embed, lm_head = mllm.take(EMBED), mllm.take(LM_HEAD)
    rows = embed.shape[0]
    if rows != first_img_id + NUM_IMG_TOKENS:
        raise ValueError(f"{mllm_path}: '{EMBED}' has {rows} rows; expected first_img_id + 8 = "
                         f"{first_img_id + NUM_IMG_TOKENS} (pass --first-img-id / --base-vocab for another vocabulary)")
    img_rows = slice(first_img_id, first_img_id + NUM_IMG_TOKENS)
    if mllm.has(EMB):
        gap = float((mllm.source[EMB].reshape(-1, embed.shape[1]).float() - embed[img_rows].float()).abs().max())
        mllm.drop(EMB, f"the demo's [IMG] embeddings: the [IMG] rows of embed_tokens are used (max difference {gap:.3g})")
    sd = Path(sd)
    unet_config = sd / "unet" / "config.json"
    if not unet_config.is_file():
        raise FileNotFoundError(f"--sd {sd}: no unet/config.json; pass a diffusers SD-1.5 or InstructPix2Pix folder")
    context_dim = int(json.loads(unet_config.read_text())["cross_attention_dim"])
    with torch.device("meta"):
        expected_head = shapes_of(EditMapper(head_cfg, int(embed.shape[1]), context_dim))
    head_state = mllm.finish(expected_head, "edit_head", report)
    report.components["edit_head"]["config"] = dataclasses.asdict(head_cfg)

    config = MGIEConfig(preset="7b", llava_dir=llava, unet_dir=str(sd / "unet"), vae_dir=str(sd / "vae"),
                        edit_head=head_cfg, num_img_tokens=NUM_IMG_TOKENS, llm_dtype=llm_dtype, vae_dtype="float32")
    model = build_mgie(config, for_inference=True)
    model.edit_head.load_state_dict({k: v.float() for k, v in head_state.items()})

    # token rows: Vicuna rows and [IMG] rows to the same tokens; the v1 image-marker rows are dropped
    inner = base_llava(model.llava)
    with torch.no_grad():
        for key, theirs, module in ((EMBED, embed, inner.get_input_embeddings()),
                                    (LM_HEAD, lm_head, inner.get_output_embeddings())):
            if theirs.shape[1] != module.weight.shape[1]:
                raise ValueError(f"{mllm_path}: '{key}' is {theirs.shape[1]} wide, the LLaVA at {llava} is "
                                 f"{module.weight.shape[1]}")
            module.weight[:base_vocab] = theirs[:base_vocab].to(module.weight.dtype)
            module.weight[model.img_token_ids] = theirs[img_rows].to(module.weight.dtype)
    marker_rows = f"rows {base_vocab}..{first_img_id - 1}"
    report.components["token_rows"] = {
        "source": str(mllm_path), "source_keys": 2, "target_keys": 2, "mapped": 2,
        "dropped": {marker_rows: "LLaVA-v1 <im_patch>/<im_start>/<im_end>: the HF model uses its own <image> token"},
    }
    report.notes.append(f"Vicuna rows 0..{base_vocab - 1} and [IMG0..7] rows {first_img_id}..{first_img_id + 7} "
                        f"copied to the same tokens of {llava}'s vocabulary (ids {model.img_token_ids[0]}..)")

    # UNet: diffusers names 1:1, strict names and shapes (the released 8-channel SD-1.5 UNet)
    unet.move_prefix("", "")
    model.unet.load_state_dict({k: v.float() for k, v in unet.finish(shapes_of(model.unet), "unet", report).items()})

    MGIEPipeline(model).save_pretrained(out)
    logger.info("imported %s → %s", source, out)
    return report
