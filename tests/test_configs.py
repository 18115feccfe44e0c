"""One validated config per concern: checked at construction, merged field by field, and the single source of the
command-line options and flow parameters that set them."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import warnings

import pytest

from model.config import (
    BIMConfig,
    LoRAConfig,
    LossConfig,
    QFormerConfig,
    SamplingConfig,
    SmartEditConfig,
    get_preset,
    tiny_config,
)
from model.train_config import TRAIN_PRESETS, TrainConfig, get_train_preset


# -- validation at construction ------------------------------------------------------------------------------------
@pytest.mark.parametrize("build, field, value, choices", [
    (lambda: BIMConfig(variant="crossattention"), "BIMConfig.variant", "'crossattention'",
     "'bim', 'plain', 'cross_attention'"),
    (lambda: SmartEditConfig(llm_dtype="fp32"), "SmartEditConfig.llm_dtype", "'fp32'", "'float32', 'bfloat16'"),
    (lambda: SmartEditConfig(stage=3), "SmartEditConfig.stage", "3", "1, 2"),
    (lambda: get_preset("tiny", bim={"variant": "xattn"}), "BIMConfig.variant", "'xattn'", "'plain'"),
    (lambda: TrainConfig(mixed_precision="bf32"), "TrainConfig.mixed_precision", "'bf32'", "'auto', 'no', 'bf16'"),
    (lambda: TrainConfig(lr_scheduler="cosin"), "TrainConfig.lr_scheduler", "'cosin'", "'cosine'"),
    (lambda: TrainConfig(stage=0), "TrainConfig.stage", "0", "1, 2"),
])
def test_an_unknown_choice_is_one_line_naming_field_value_and_choices(build, field, value, choices):
    with pytest.raises(ValueError) as err:
        build()
    message = str(err.value)
    assert "\n" not in message
    assert field in message and value in message and choices in message


def test_synthetic_config_rejects_unknown_choices_naming_them():
    from pipeline.synthetic.config import SyntheticConfig

    for bad, word in (({"sam_type": "vit_x"}, "vit_x"), ({"scenarios": {"upside_down": 3}}, "upside_down"),
                      ({"operations": ["paint"]}, "paint"), ({"recolour_with": "hsv"}, "hsv")):
        with pytest.raises(ValueError, match=word):
            SyntheticConfig(**bad)
    with pytest.raises(ValueError, match="huge"):
        SyntheticConfig.preset("huge")


def test_types_are_checked_and_coerced():
    with pytest.raises(ValueError, match=r"LoRAConfig\.r = 'x'"):
        LoRAConfig(r="x")
    with pytest.raises(ValueError, match=r"QFormerConfig\.num_layers = 2\.5"):
        QFormerConfig(num_layers=2.5)
    cfg = TrainConfig(betas=[0.8, 0.9], manifests=[__import__("pathlib").Path("a/shardindex.json")])
    assert cfg.betas == (0.8, 0.9) and cfg.manifests == ["a/shardindex.json"]  # list → tuple, path → str
    assert LossConfig(image_drop_range=[0.1, 0.2]).image_drop_range == (0.1, 0.2)


# -- overrides merge field by field --------------------------------------------------------------------------------
def test_nested_overrides_keep_the_presets_other_fields():
    tiny = tiny_config()
    plain = get_preset("tiny", bim={"variant": "plain"})
    assert plain.bim == dataclasses.replace(tiny.bim, variant="plain")  # tiny sizes kept, only the variant changes
    assert plain.bim.embedding_dim == 32 != BIMConfig().embedding_dim
    official = get_preset("7b-official", lora={"dropout": 0.1})
    assert (official.lora.r, official.lora.alpha, official.lora.dropout) == (8, 16, 0.1)
    slow = get_preset("tiny", sampling={"num_inference_steps": 9})
    assert (slow.sampling.num_inference_steps, slow.sampling.text_guidance_scale) == (9, 7.5)
    with pytest.raises(ValueError, match=r"BIMConfig: unknown field\(s\) \['varient'\]"):
        get_preset("tiny", bim={"varient": "plain"})


def test_train_config_validates_its_model_overrides():
    cfg = get_train_preset(2, "tiny", model={"bim": {"variant": "plain"}})
    assert cfg.model_config().bim.variant == "plain" and cfg.model_config().bim.depth == 1
    with pytest.raises(ValueError, match=r"TrainConfig\.model .*BIMConfig\.variant = 'crossattention'"):
        get_train_preset(2, "tiny", model={"bim": {"variant": "crossattention"}})
    with pytest.raises(ValueError, match=r"TrainConfig\.model .*unknown field\(s\) \['llava_directory'\]"):
        TrainConfig(model={"llava_directory": "x"})


def test_flat_pipeline_configs_saved_before_the_split_still_load():
    legacy = {k: v for k, v in tiny_config().to_dict().items() if k not in ("loss", "sampling")}
    legacy |= {"num_inference_steps": 7, "text_drop_below": 0.2}
    cfg = SmartEditConfig.from_dict(legacy)
    assert cfg.sampling.num_inference_steps == 7 and cfg.loss.text_drop_below == 0.2


# -- one preset name, for the model and for training ---------------------------------------------------------------
def test_a_preset_name_means_the_same_model_and_training_preset():
    for (stage, name), values in TRAIN_PRESETS.items():
        assert values["preset"] == name
        assert get_train_preset(stage, name).model_config().preset == name


def test_code_spelling_is_a_deprecated_alias_of_official():
    with pytest.warns(FutureWarning, match="'7b-code' is deprecated: it is spelled '7b-official'"):
        old = get_train_preset(2, "7b-code")
    assert old == get_train_preset(2, "7b-official") and old.weight_decay == 0.0
    with pytest.warns(FutureWarning, match="'13b-code' is deprecated"):
        assert get_preset("13b-code") == get_preset("13b-official")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_train_preset(2, "7b-official")  # the current spelling warns nothing


def test_one_resume_default():
    assert TrainConfig().resume == "latest" == get_train_preset(1, "tiny").resume
    assert TrainConfig(resume="").resume is None


# -- every field reachable from the command line and the flows -----------------------------------------------------
def _subparser(name: str) -> argparse.ArgumentParser:
    from smartedit_cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _option_dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def test_every_train_config_field_is_a_smartedit_train_option():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields <= _option_dests(_subparser("train"))


def test_train_options_reach_the_config():
    from model.train_config import train_config_from_args

    parser = _subparser("train")
    args = parser.parse_args([
        "--preset", "tiny", "--stage", "2", "--manifest", "a.json", "--manifests", "b.json", "c.json", "--steps", "7",
        "--lr-scheduler", "cosine", "--betas", "0.8", "0.95", "--resume", "none", "--no-save-pipeline",
        "--keep-last", "none", "--model", '{"bim": {"variant": "plain"}, "sampling": {"num_inference_steps": 3}}',
    ])
    cfg = train_config_from_args(args, args.train_options)
    assert (cfg.manifests, cfg.steps, cfg.lr_scheduler, cfg.betas, cfg.resume, cfg.save_pipeline, cfg.keep_last) == \
        (["a.json", "b.json", "c.json"], 7, "cosine", (0.8, 0.95), None, False, None)
    assert cfg.lr == TRAIN_PRESETS[(2, "tiny")]["lr"]  # not given: the preset's value
    model = cfg.model_config()
    assert (model.bim.variant, model.bim.depth, model.sampling.num_inference_steps) == ("plain", 1, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mixed-precision", "bf32"])


def test_every_sampling_field_is_a_smartedit_edit_option():
    dests = _option_dests(_subparser("edit"))
    assert {f.name for f in dataclasses.fields(SamplingConfig)} <= dests


def test_every_synthetic_config_field_is_a_build_synthetic_option_and_reaches_the_config():
    from model.config_args import given_overrides
    from pipeline.synthetic.config import SyntheticConfig

    parser = _subparser("build-synthetic")
    assert set(SyntheticConfig.model_fields) <= _option_dests(parser)
    args = parser.parse_args(["--input", "i", "--out", "o", "--scenarios", "left_right=3,colour=1",
                              "--operations", "remove", "recolour", "--eval-set", "a", "--eval-set", "b",
                              "--sam-arch", '{"encoder_embed_dim": 8, "encoder_depth": 1, "encoder_num_heads": 1, '
                                            '"encoder_global_attn_indexes": [0]}', "--steps", "5"])
    cfg = SyntheticConfig(**given_overrides(args, args.config_options))
    assert cfg.scenarios == {"left_right": 3, "colour": 1} and cfg.operations == ["remove", "recolour"]
    assert cfg.eval_sets == ["a", "b"] and cfg.sam_arch.encoder_depth == 1 and cfg.inpaint_steps == 5


def test_every_train_config_field_is_reachable_from_the_train_flow(tmp_path):
    """The flow's named parameters are TrainConfig fields defaulting to None (the preset's value); ``overrides``
    reaches the rest."""
    from flows.train import train, train_config

    manifest = tmp_path / "shardindex.json"
    manifest.write_text("{}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    params = inspect.signature(train.fn).parameters
    # not TrainConfig fields: the profile the defaults come from, and how the recipe is launched
    launch = {"profile", "nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint"}
    assert launch <= set(params)
    named = set(params) - {"overrides"} - launch
    assert named <= fields
    assert all(params[n].default is None for n in named - {"preset", "stage"})
    base = get_train_preset(2, "tiny")
    special = {"model": {"seed": 2}, "betas": (0.8, 0.9), "mixed_precision": "no", "lr_scheduler": "linear",
               "gradient_checkpointing": True, "max_grad_norm": 0.5, "keep_last": 7, "init_from": "ckpt/step-1",
               "resume": None, "warmup_ratio": 0.25}
    changed = {}
    for name in sorted(fields - named - {"preset", "stage", "manifests"}):
        value = getattr(base, name)
        changed[name] = special[name] if name in special else (
            (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int)
            else value * 2 if isinstance(value, float) else value + "-other")
        assert changed[name] != value, name
    cfg = train_config("tiny", 2, [str(manifest)], overrides=changed, steps=3)
    assert {k: getattr(cfg, k) for k in changed} == changed and cfg.steps == 3
    assert train_config("tiny", 2, [str(manifest)]).weight_decay == TRAIN_PRESETS[(2, "tiny")]["weight_decay"]
    with pytest.raises(ValueError, match=r"overrides \['learning_rate'\] are not TrainConfig fields"):
        train_config("tiny", 2, [str(manifest)], overrides={"learning_rate": 1})


def test_the_build_synthetic_flow_takes_the_config_itself():
    from flows.build_synthetic import build_synthetic
    from pipeline.synthetic.config import SyntheticConfig

    params = inspect.signature(build_synthetic.fn).parameters
    assert params["config"].annotation in (SyntheticConfig | None, "SyntheticConfig | None")
    assert not set(params) & set(SyntheticConfig.model_fields)  # no field declared twice


def test_edit_samples_with_the_saved_sampling_config(tmp_path):
    """A tiny pipeline evaluates its preset's 4 steps (not a hard-coded 100) at its own resolution."""
    import torch
    from PIL import Image

    from model.pipeline import SmartEditPipeline
    from model.smartedit import build_smartedit

    pipe = SmartEditPipeline(build_smartedit(tiny_config(sampling={"num_inference_steps": 3}), for_inference=True))
    pipe.save_pretrained(tmp_path / "p")
    loaded = SmartEditPipeline.from_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "smartedit_config.json").read_text())["sampling"]["num_inference_steps"] == 3
    calls = []
    loaded.model.unet.register_forward_hook(lambda *a: calls.append(1))
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    out = loaded(image, "make it blue", generator=torch.Generator().manual_seed(0))[0]
    assert len(calls) == 3 and out.size == (32, 32)  # 3 steps (3-way CFG is one batched UNet call), 32 px
    loaded(image, "make it blue", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 5


def test_smartedit_train_runs_the_models_run_with_the_given_options(tmp_path, capsys):
    """`smartedit train` builds the TrainConfig from its options and calls model.train.run (no Prefect)."""
    import torch

    from smartedit_cli.main import main
    from test_train_data import write_dataset

    torch.set_num_threads(1)
    write_dataset(tmp_path / "shards", "cc12m", "cc12m", "caption", 4)
    out = tmp_path / "run"
    code = main(["train", "--stage", "1", "--steps", "1", "--manifests", str(tmp_path / "shards"),
                 "--output-dir", str(out), "--no-save-pipeline", "--checkpoint-every", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["stage"], summary["steps"], summary["pipeline_dir"]) == (1, 1, None)
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert (saved.steps, saved.save_pipeline, saved.lr) == (1, False, TRAIN_PRESETS[(1, "tiny")]["lr"])
    assert main(["train", "--stage", "1", "--manifests", str(tmp_path / "empty")]) == 1  # one error line, exit 1
    missing = tmp_path / "empty"
    assert capsys.readouterr().err.strip().splitlines() == [f"error: train: manifest {missing}: no such file or directory"]


def test_a_config_error_on_the_command_line_is_one_line_naming_the_field(tmp_path, capsys):
    from smartedit_cli.main import main

    code = main(["build-synthetic", "--input", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--scenarios", '{"upside_down": 3}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: SyntheticConfig.scenarios") and "'upside_down'" in err[0] and "'left_right'" in err[0]
    assert not (tmp_path / "out").exists()  # rejected before anything is written
