"""``llava-original``: a LLaVA-1.1 / LLaVA-Lightning checkpoint (the original repo's ``LlavaLlamaForCausalLM``) →
a transformers ``LlavaForConditionalGeneration`` folder with LLaVA-1.1's single-Linear projector, usable as
``llava_dir`` of the ``7b-paper`` / ``13b-paper`` presets.

Original layout: ``config.json`` (``model_type: llava``, ``mm_vision_tower``, ``mm_vision_select_layer: -2``,
``mm_hidden_size``), shards ``pytorch_model-*.bin`` or ``*.safetensors`` holding ``model.embed_tokens``,
``model.layers.*``, ``model.norm``, ``lm_head`` and ``model.mm_projector.{weight,bias}``, and the tokenizer (with
``<im_patch>``, ``<im_start>``, ``<im_end>`` when ``mm_use_im_start_end``). The CLIP tower is not in the shards: the
original code loads it by name (``--clip-vision``: CLIP ViT-L/14 at 224 px).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from model.importers.mapping import KeyMapping, MappingReport, load_weights, shapes_of

logger = logging.getLogger(__name__)

DESCRIPTION = "LLaVA-1.1 / LLaVA-Lightning (original repo) → LlavaForConditionalGeneration, one Linear projector"
IMAGE_TOKEN = "<im_patch>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip-vision", required=True, help="CLIP ViT-L/14 (224 px) folder: CLIPVisionModel weights "
                        "+ preprocessor_config.json")


def _shards(source: Path) -> list[Path]:
    files = sorted(source.glob("*.safetensors")) or sorted(source.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{source}: no *.safetensors or pytorch_model*.bin shards")
    return files


def map_llava_original(state: dict, source_name: str, report: MappingReport | None = None,
                       expected: dict | None = None) -> dict:
    """Original LLaVA names → transformers LlavaForConditionalGeneration names (vision tower excluded)."""
    m = KeyMapping(state, source_name)
    m.drop_matching(lambda k: k.endswith("rotary_emb.inv_freq"), "RoPE frequencies: recomputed by transformers")
    m.drop_matching(lambda k: k.startswith("model.vision_tower."), "CLIP tower copy: taken from --clip-vision")
    m.move("lm_head.weight", "lm_head.weight")
    m.move("model.mm_projector.weight", "model.multi_modal_projector.linear_1.weight")
    m.move("model.mm_projector.bias", "model.multi_modal_projector.linear_1.bias")
    m.move_prefix("model.", "model.language_model.")
    target = m.finish(None, "llava", report)
    if expected is not None:
        lm_expected = {k: v for k, v in expected.items() if not k.startswith("model.vision_tower.")}
        probe = KeyMapping({}, source_name)
        probe.target = target
        probe.finish(lm_expected, "llava")
    return target


def import_checkpoint(source: Path, out: Path, clip_vision: str) -> MappingReport:
    """Write ``out`` as a LlavaForConditionalGeneration folder (+ tokenizer, CLIP image processor)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig

    from model.importers.smartedit_official import _clip_vision_weights, map_vision, meta_llava

    clip_dir = Path(clip_vision)
    raw = json.loads((source / "config.json").read_text())
    select = int(raw.get("mm_vision_select_layer", -2))
    text_fields = {k: v for k, v in raw.items() if not k.startswith("mm_") and k not in
                   ("model_type", "architectures", "transformers_version", "torch_dtype", "_name_or_path")}
    text = LlamaConfig(**text_fields)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    vision = CLIPVisionConfig.from_pretrained(clip_dir)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=select,
                         vision_feature_select_strategy="default",
                         image_seq_length=(vision.image_size // vision.patch_size) ** 2)
    config.mm_projector_type = "linear"
    report = MappingReport("llava-original")
    state: dict = {}
    for shard in _shards(source):
        state.update(load_weights(shard))
    llava = meta_llava(config)
    expected = shapes_of(llava)
    target = map_llava_original(state, str(source), report, expected)
    target.update(map_vision(_clip_vision_weights(clip_dir), str(clip_dir), report, expected))
    llava.load_state_dict(target, assign=True, strict=True)
    llava.config.dtype = target["lm_head.weight"].dtype
    llava.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor.from_pretrained(clip_dir).save_pretrained(out)
    report.notes.append(f"vision_feature_layer={select}, patch tokens, one Linear projector, tensors kept in their "
                        f"dtype; use with get_preset('7b-paper', llava_dir='{out}')")
    return report
