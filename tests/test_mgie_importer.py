"""`mgie-official` importer on tiny fixtures written in the released key names (mllm.pt, unet.pt)."""

from __future__ import annotations

import pytest
import torch

from model.mgie.config import EditHeadConfig

torch.set_num_threads(1)

BASE, FIRST_IMG = 261, 264  # tiny vocabulary: 261 base tokens, 3 LLaVA-v1 marker rows, then [IMG0..7]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny LLaVA base and SD folder, and an mgie_7b-style folder of fp16 tensors in the official names."""
    from model.llava import build_tiny_llava
    from model.mgie.edit_head import EditMapper
    from model.unet import build_tiny_unet, build_tiny_vae

    root = tmp_path_factory.mktemp("mgie-release")
    llava, tokenizer, image_processor = build_tiny_llava(seed=4)
    for part in (llava, tokenizer, image_processor):
        part.save_pretrained(root / "llava")
    build_tiny_unet(32, seed=5).save_pretrained(root / "sd" / "unet")
    build_tiny_vae(seed=6).save_pretrained(root / "sd" / "vae")
    g = torch.Generator().manual_seed(0)
    head = EditMapper(EditHeadConfig(hidden_size=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=1,
                                     feedforward_size=64), 64, 32)
    embed = torch.randn(FIRST_IMG + 8, 64, generator=g)
    mllm = {"model.embed_tokens.weight": embed.half(), "lm_head.weight": torch.randn(FIRST_IMG + 8, 64, generator=g).half(),
            **{f"edit_head.{k}": v.half() for k, v in head.state_dict().items()},
            "emb": embed[FIRST_IMG:].half().unsqueeze(0)}
    unet = {k: (v + 0.01 * torch.randn(v.shape, generator=g)).half()
            for k, v in build_tiny_unet(32, seed=7).state_dict().items()}
    (root / "mgie_7b").mkdir()
    torch.save(mllm, root / "mgie_7b" / "mllm.pt")
    torch.save(unet, root / "mgie_7b" / "unet.pt")
    return {"root": root, "mllm": mllm, "unet": unet}


def _options(release):
    return {"llava": str(release["root"] / "llava"), "sd": str(release["root"] / "sd"), "base_vocab": BASE,
            "first_img_id": FIRST_IMG, "llm_dtype": "float32"}


def test_import_maps_every_tensor_and_the_pipeline_runs(release, tmp_path):
    from PIL import Image

    from model.importers import import_checkpoint
    from model.pipelines import load_pipeline

    report = import_checkpoint("mgie-official", release["root"] / "mgie_7b", tmp_path / "pipe", **_options(release))
    head = report.components["edit_head"]
    assert head["config"]["num_encoder_layers"] == 2 and head["mapped"] == head["target_keys"] == head["source_keys"] - 3
    assert "max difference 0" in head["dropped"]["emb"]
    assert "rows 261..263" in report.components["token_rows"]["dropped"]
    assert report.components["unet"]["mapped"] == len(release["unet"])
    assert (tmp_path / "pipe" / "import_report.json").is_file()

    pipe = load_pipeline(tmp_path / "pipe")
    m = pipe.model
    mllm = release["mllm"]
    head = m.edit_head.state_dict()
    assert all(torch.equal(head[k], mllm[f"edit_head.{k}"].float()) for k in head)
    llava = m.llava
    ids = m.img_token_ids
    for ours, key in ((llava.get_input_embeddings().weight, "model.embed_tokens.weight"),
                      (llava.get_output_embeddings().weight, "lm_head.weight")):
        assert torch.equal(ours[:BASE], mllm[key][:BASE].float())
        assert torch.equal(ours[ids], mllm[key][FIRST_IMG:].float())
    unet = m.unet.state_dict()
    assert all(torch.equal(unet[k], release["unet"][k].float()) for k in unet)
    assert m.unet.config.in_channels == 8
    out = pipe(Image.new("RGB", (32, 32), (10, 200, 10)), "make it red", num_inference_steps=2, height=32, width=32,
               generator=torch.Generator().manual_seed(0))
    assert out[0].size == (32, 32)


def test_unknown_or_wrong_shaped_keys_are_errors_naming_them(release, tmp_path):
    from model.importers.mgie_official import import_checkpoint

    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({**release["mllm"], "model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}, bad / "mllm.pt")
    torch.save(release["unet"], bad / "unet.pt")
    with pytest.raises(ValueError, match=r"mllm\.pt.*model\.layers\.0\.mlp\.up_proj\.weight"):
        import_checkpoint(bad, tmp_path / "o1", **_options(release))

    torch.save(release["mllm"], bad / "mllm.pt")
    unet = dict(release["unet"])
    unet["conv_in.weight"] = unet["conv_in.weight"][:, :4]  # a 4-channel UNet is not the released one
    torch.save(unet, bad / "unet.pt")
    with pytest.raises(ValueError, match=r"unet\.pt → unet: .*'conv_in\.weight'"):
        import_checkpoint(bad, tmp_path / "o2", **_options(release))

    with pytest.raises(ValueError, match="first_img_id"):
        import_checkpoint(release["root"] / "mgie_7b", tmp_path / "o3", **{**_options(release), "first_img_id": 32003})


def test_smartedit_import_checkpoint_command(release, tmp_path):
    from smartedit_cli.main import build_parser

    args = build_parser().parse_args([
        "import-checkpoint", "mgie-official", str(release["root"] / "mgie_7b"), "--out", str(tmp_path / "p"),
        "--llava", str(release["root"] / "llava"), "--sd", str(release["root"] / "sd"), "--base-vocab", str(BASE),
        "--first-img-id", str(FIRST_IMG), "--llm-dtype", "float32"])
    assert args.func(args) == 0
    assert (tmp_path / "p" / "mgie_config.json").is_file() and (tmp_path / "p" / "import_report.json").is_file()


class _NotATensor:
    pass


def test_pickled_objects_are_refused(release, tmp_path):
    from model.importers.mgie_official import import_checkpoint

    bad = tmp_path / "pickle"
    bad.mkdir()
    torch.save({"model.embed_tokens.weight": _NotATensor()}, bad / "mllm.pt")
    torch.save(release["unet"], bad / "unet.pt")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        import_checkpoint(bad, tmp_path / "o", **_options(release))
