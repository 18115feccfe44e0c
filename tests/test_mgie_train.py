"""MGIE training on the tiny preset (CPU): the `smartedit train --model mgie` → `smartedit edit` round trip,
exact resume, expressive answers in the batches, and the presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.mgie.train_config import MGIE_TRAIN_PRESETS, MGIETrainConfig, get_mgie_train_preset
from test_train_data import write_dataset


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def edit_manifest(tmp_path_factory) -> str:
    return str(write_dataset(tmp_path_factory.mktemp("mgie-shards"), "magicbrush", "magicbrush", "edit_pair", 6))


def _parser():
    from smartedit_cli.main import build_parser  # the real `smartedit` command tree

    return build_parser()


def test_cli_train_mgie_then_edit(edit_manifest, tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="model.mgie.train")
    # an expressive sidecar for every (sample, instruction) of the fixture
    sidecar = tmp_path / "expressive" / "mb"
    sidecar.mkdir(parents=True)
    records = [{"key": f"edit_pair-{i:05d}", "instruction": f"{verb} it blue {i}", "description": "d.",
                "expressive": "The object turns blue."} for i in range(6) for verb in ("make", "turn")]
    (sidecar / "x.expressive.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    parser = _parser()
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--model", "mgie", "--preset", "tiny", "--steps", "2", "--manifest",
                              edit_manifest, "--allow-missing-sources", "--output-dir", str(out),
                              "--expressive", str(tmp_path / "expressive")])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and set(summary["final"]) >= {"loss", "lm_loss", "diffusion_loss", "lr"}
    assert not any("had no expressive instruction" in r.getMessage() for r in caplog.records)
    assert Path(summary["checkpoint"]).name == "step-00000002"
    index = json.loads((Path(summary["pipeline_dir"]) / "model_index.json").read_text())
    assert index["_class_name"] == "MGIEPipeline"
    saved = MGIETrainConfig.from_yaml(out / "config.yaml")
    assert saved.expressive == [str(tmp_path / "expressive")] and saved.preset == "tiny"
    with pytest.raises(ValueError, match="MGIE options; add --model mgie"):
        args = parser.parse_args(["train", "--manifest", edit_manifest, "--epochs", "2"])
        args.func(args)

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "in.png")
    args = parser.parse_args(["edit", "--model", summary["pipeline_dir"], "--image", str(tmp_path / "in.png"),
                              "--instruction", "make it blue", "-o", str(tmp_path / "o.png"), "--steps", "2",
                              "--size", "32", "--device", "cpu"])
    assert args.func(args) == 0
    assert Image.open(tmp_path / "o.png").size == (32, 32)
    assert "expressive instruction:" in capsys.readouterr().out


def test_resume_gives_the_same_next_step_loss(edit_manifest, tmp_path):
    import shutil

    from model.checkpoint import list_checkpoints
    from model.mgie.train import train_mgie

    def cfg(out, **kw):
        return get_mgie_train_preset("tiny", manifests=[edit_manifest], output_dir=str(out), allow_missing_sources=True,
                                     save_pipeline=False, **kw)

    full = train_mgie(cfg(tmp_path / "full", steps=3, checkpoint_every=2, keep_last=None))
    step2 = list_checkpoints(tmp_path / "full")[0]
    assert step2.name == "step-00000002"
    shutil.copytree(step2, tmp_path / "resumed" / "checkpoints" / step2.name)
    resumed = train_mgie(cfg(tmp_path / "resumed", steps=3, checkpoint_every=2, resume="latest"))
    assert resumed.start_step == 2 and [h["step"] for h in resumed.history] == [3]
    for key in ("loss", "lm_loss", "diffusion_loss"):
        assert resumed.history[0][key] == pytest.approx(full.history[2][key], rel=1e-6, abs=1e-7), key


def test_featurize_answers_with_the_expressive_instruction():
    from model.data import TrainExample
    from model.mgie.config import tiny_mgie_config
    from model.mgie.model import build_mgie
    from model.mgie.train import Featurize

    processor = build_mgie(tiny_mgie_config()).processor
    image = Image.new("RGB", (32, 32))
    featurize = Featurize(processor, {"k1": {"make it blue": "It is blue now."}})
    with_summary = featurize(TrainExample("k1", "edit_pair", "mb", "make it blue", image, image))
    without = featurize(TrainExample("k2", "edit_pair", "mb", "make it blue", image, image))
    labelled = [i for i, label in zip(with_summary["input_ids"].tolist(), with_summary["labels"].tolist()) if label != -100]
    assert processor.tokenizer.decode(labelled[:-9]) == " It is blue now."
    assert int((without["labels"] != -100).sum()) == 9  # the 8 [IMG] tokens and </s>
    assert (featurize.with_summary, featurize.without_summary) == (1, 1)


@pytest.mark.parametrize("name", sorted(MGIE_TRAIN_PRESETS))
def test_every_mgie_preset_validates_and_round_trips(name, tmp_path):
    cfg = get_mgie_train_preset(name)
    assert cfg.model_config().preset == MGIE_TRAIN_PRESETS[name]["preset"]
    cfg.save_yaml(tmp_path / "c.yaml")
    assert MGIETrainConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_mgie_7b_recipe_values():
    cfg = get_mgie_train_preset("mgie-7b")
    model = cfg.model_config()
    assert (cfg.lr, cfg.weight_decay, cfg.lr_scheduler, cfg.warmup_ratio) == (5e-4, 0.0, "cosine", 0.03)
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.epochs) == ("bf16", True, 40.0)
    assert cfg.micro_batch_size * cfg.grad_accum * 8 == 32  # global batch 32 on 8 GPUs
    assert (model.resolution, model.num_img_tokens, model.token_rows, model.loss.diffusion_loss_weight) == (256, 8, "full", 0.5)
    assert (model.sampling.num_inference_steps, model.sampling.text_guidance_scale, model.sampling.image_guidance_scale,
            model.max_new_tokens, model.no_repeat_ngram_size) == (100, 7.5, 1.5, 96, 3)
    assert model.edit_head.hidden_size == 512 and model.edit_head.num_queries == 77
    # 40 epochs of 313,010 InstructPix2Pix pairs at 32 per step, 3 % warm-up
    steps = cfg.resolve_steps(313_010, num_processes=8)
    assert steps == 391_263 and dataclasses.replace(cfg, steps=steps).resolved_warmup_steps() == 11_738
    assert get_mgie_train_preset("mgie-7b", steps=10).resolve_steps(313_010, 8) == 10


def test_recipe_command_line_reads_a_config_file(tmp_path):
    from model.mgie.train import parse_cli

    path = tmp_path / "mgie.yaml"
    get_mgie_train_preset("mgie-7b", output_dir="runs/x", expressive=["e"]).save_yaml(path)
    cfg = parse_cli(["--config", str(path), "--manifest", "a.json", "--steps", "7"])
    assert (cfg.preset, cfg.lr, cfg.manifests, cfg.expressive) == ("7b", 5e-4, ["a.json"], ["e"])
    assert (cfg.steps, cfg.epochs, cfg.resolve_steps(100)) == (7, None, 7)  # --steps wins over the epochs
    from_file = parse_cli(["--config", str(path)])
    assert from_file.epochs == 40.0 and from_file.resolve_steps(100) == 1000  # 40 epochs · 100 samples / 4 per step


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="no MGIE training preset 'huge'"):
        get_mgie_train_preset("huge")
    with pytest.raises(ValueError, match="warmup_ratio"):
        get_mgie_train_preset("tiny", warmup_ratio=1.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*learning_rate"):
        MGIETrainConfig.from_yaml(bad)
    from model.mgie.config import get_mgie_preset

    with pytest.raises(ValueError, match="token_rows"):
        get_mgie_preset("tiny", token_rows="some")
