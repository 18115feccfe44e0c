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
every target tensor is checked for name and shape; anything else is an error naming the key and the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DESCRIPTION = "MGIE-7B release (mgie_7b/mllm.pt + unet.pt) → MGIEPipeline folder"
REPORT_NAME = "import_report.json"
EMBED, LM_HEAD, EDIT_HEAD, EMB = "model.embed_tokens.weight", "lm_head.weight", "edit_head.", "emb"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llava", required=True, help="LLaVA-7B v1 in Hugging Face format (LlavaForConditionalGeneration)")
    parser.add_argument("--sd", required=True, help="diffusers SD-1.5 or InstructPix2Pix folder (unet/ config, vae/)")
    parser.add_argument("--base-vocab", type=int, default=32000, help="rows shared with the base vocabulary (32000)")
    parser.add_argument("--first-img-id", type=int, default=32003, help="official id of [IMG0] (32003)")
    parser.add_argument("--num-heads", type=int, default=4, help="edit-head attention heads (not in the weights; 4)")
    parser.add_argument("--llm-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))


def _load(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; an mgie_7b folder holds mllm.pt and unet.pt")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling error: say why and what to do
        raise ValueError(f"{path}: not loadable with torch.load(weights_only=True) ({exc}); only tensor dicts are "
                         f"accepted") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def edit_head_config(state: dict[str, Any], num_heads: int):
    """EditHeadConfig read off the official edit-head tensors (``edit_head.`` prefix removed)."""
    from model.mgie.config import EditHeadConfig

    def layers(kind: str) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(f"mapper.{kind}.layers.")})

    return EditHeadConfig(hidden_size=int(state["llm2hid.weight"].shape[0]), num_heads=num_heads,
                          num_encoder_layers=layers("encoder"), num_decoder_layers=layers("decoder"),
                          feedforward_size=int(state["mapper.encoder.layers.0.linear1.weight"].shape[0]),
                          num_queries=int(state["query"].shape[1]))


def _check(component: str, source: str, got: dict[str, Any], expected: dict[str, Any]) -> None:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise ValueError(f"{source} → {component}: missing keys {missing[:5]} ({len(missing)}), unexpected "
                         f"{extra[:5]} ({len(extra)}); not the official MGIE layout")
    wrong = [k for k in got if tuple(got[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{source} → {component}: '{k}' is {tuple(got[k].shape)}, expected {tuple(expected[k].shape)}")


def import_checkpoint(source: Path | str, out: Path | str, llava: str, sd: str, base_vocab: int = 32000,
                      first_img_id: int = 32003, num_heads: int = 4, llm_dtype: str = "bfloat16") -> dict[str, Any]:
    """Convert ``source`` (an mgie_7b folder) into an MGIEPipeline folder at ``out``; returns the mapping report
    (also written to ``out/import_report.json``)."""
    import torch

    from model.llava import SmartEditLLaVA
    from model.mgie.config import MGIEConfig
    from model.mgie.model import build_mgie
    from model.mgie.pipeline import MGIEPipeline

    source, out = Path(source), Path(out)
    mllm_path, unet_path = source / "mllm.pt", source / "unet.pt"
    mllm, unet_state = _load(mllm_path), _load(unet_path)
    unknown = sorted(k for k in mllm if k not in (EMBED, LM_HEAD, EMB) and not k.startswith(EDIT_HEAD))
    if unknown:
        raise ValueError(f"{mllm_path}: {len(unknown)} key(s) not in the official layout, e.g. {unknown[:5]}")
    for key in (EMBED, LM_HEAD):
        if key not in mllm:
            raise KeyError(f"{mllm_path}: required key '{key}' is missing (is this mgie_7b/mllm.pt?)")
    head_state = {k[len(EDIT_HEAD):]: v for k, v in mllm.items() if k.startswith(EDIT_HEAD)}
    if "llm2hid.weight" not in head_state:
        raise KeyError(f"{mllm_path}: required key 'edit_head.llm2hid.weight' is missing")
    head_cfg = edit_head_config(head_state, num_heads)
    num_img = 8
    rows = mllm[EMBED].shape[0]
    if rows != first_img_id + num_img:
        raise ValueError(f"{mllm_path}: '{EMBED}' has {rows} rows; expected first_img_id + 8 = {first_img_id + num_img} "
                         f"(pass --first-img-id / --base-vocab for another vocabulary)")

    sd = Path(sd)
    config = MGIEConfig(preset="7b", llava_dir=llava, unet_dir=str(sd / "unet"), vae_dir=str(sd / "vae"),
                        edit_head=head_cfg, num_img_tokens=num_img, llm_dtype=llm_dtype, vae_dtype="float32")
    model = build_mgie(config, for_inference=True)

    # edit head: strict names and shapes
    expected = model.edit_head.state_dict()
    _check("edit_head", str(mllm_path), head_state, expected)
    model.edit_head.load_state_dict({k: v.float() for k, v in head_state.items()})

    # token rows: Vicuna rows and [IMG] rows to the same tokens; the v1 image-marker rows are dropped
    inner = SmartEditLLaVA.inner(model.llava)
    ours = model.img_token_ids
    with torch.no_grad():
        for key, module in ((EMBED, inner.get_input_embeddings()), (LM_HEAD, inner.get_output_embeddings())):
            theirs = mllm[key]
            if theirs.shape[1] != module.weight.shape[1]:
                raise ValueError(f"{mllm_path}: '{key}' is {theirs.shape[1]} wide, the LLaVA at {llava} is "
                                 f"{module.weight.shape[1]}")
            module.weight[:base_vocab] = theirs[:base_vocab].to(module.weight.dtype)
            module.weight[ours] = theirs[first_img_id:first_img_id + num_img].to(module.weight.dtype)
    notes = []
    if EMB in mllm:
        emb = mllm[EMB].reshape(-1, mllm[EMB].shape[-1]).float()
        gap = float((emb - mllm[EMBED][first_img_id:first_img_id + num_img].float()).abs().max())
        notes.append(f"'emb' dropped: the [IMG] rows of embed_tokens are used instead (max difference {gap:.3g})")

    # UNet: strict names and shapes (8-channel SD-1.5)
    _check("unet", str(unet_path), unet_state, model.unet.state_dict())
    model.unet.load_state_dict({k: v.float() for k, v in unet_state.items()})

    MGIEPipeline(model).save_pretrained(out)
    report = {
        "format": "mgie-official",
        "components": {
            "edit_head": {"source": str(mllm_path), "mapped": len(head_state), "config": dataclasses.asdict(head_cfg)},
            "token_rows": {"source": str(mllm_path), "mapped": {"vicuna": base_vocab, "img": num_img},
                           "dropped": {f"rows {base_vocab}..{first_img_id - 1}": "LLaVA-v1 <im_patch>/<im_start>/"
                                       "<im_end>: the HF model uses its own <image> token"}},
            "unet": {"source": str(unet_path), "mapped": len(unet_state)},
        },
        "notes": notes,
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    logger.info("imported %s → %s", source, out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.mgie.importer", description=DESCRIPTION)
    parser.add_argument("source", help="the mgie_7b folder (mllm.pt, unet.pt)")
    parser.add_argument("--out", required=True, help="output MGIEPipeline folder")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {k: v for k, v in vars(args).items() if k not in ("source", "out")}
    import_checkpoint(args.source, args.out, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
