"""The `train` deployment's event trigger takes its preset from a named training profile chosen at deploy time,
so a production deployment never trains the tiny demo model on a `shards.built` event."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _train_trigger() -> dict:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (train,) = [d for d in spec["deployments"] if d["name"] == "train"]
    (trigger,) = train["triggers"]
    return trigger


def _deploy_time(trigger: dict, monkeypatch, profile: str | None) -> dict:
    # what `prefect deploy` does to the deployment's config before creating its triggers (prefect/cli/deploy:
    # `{{ $VAR }}` from the deploying shell's environment, event placeholders left for the automation)
    from prefect.utilities.templating import apply_values

    if profile is None:
        monkeypatch.delenv("SMARTEDIT_PROFILE", raising=False)
    else:
        monkeypatch.setenv("SMARTEDIT_PROFILE", profile)
    return apply_values(trigger, dict(os.environ), remove_notset=False)


@pytest.mark.parametrize("profile, preset, missing_ok", [("demo", "tiny", True), ("production", "7b", False)])
def test_trigger_parameters_come_from_the_deployed_profile(profile, preset, missing_ok, monkeypatch):
    from flows.train import resolve_profile

    trigger = _train_trigger()
    assert not {"preset", "stage", "steps", "allow_missing_sources", "model"} & set(trigger["parameters"])
    params = _deploy_time(trigger, monkeypatch, profile)["parameters"]
    assert params["profile"] == profile
    assert params["manifests"] == "{{ event.payload.output }}"  # the event's template survives deploy time

    monkeypatch.setenv("SMARTEDIT_MODELS", "/models")
    given = resolve_profile(params["profile"])
    assert (given["preset"], given["stage"], given["allow_missing_sources"]) == (preset, 2, missing_ok)
    if profile == "production":
        assert given["model"]["llava_dir"] == "/models/llava-7b-hf"


def test_production_profile_refuses_tiny_and_names_what_is_missing(monkeypatch):
    from flows.train import load_train_profile, resolve_profile

    monkeypatch.setenv("SMARTEDIT_MODELS", "/models")
    assert "tiny" not in load_train_profile("production")["allowed_presets"]
    with pytest.raises(ValueError, match="does not train preset 'tiny'"):
        resolve_profile("production", preset="tiny")
    assert resolve_profile("production", preset="13b", steps=7)["steps"] == 7  # explicit parameters win

    monkeypatch.delenv("SMARTEDIT_MODELS")
    with pytest.raises(ValueError, match=r"production.yaml: \$\{SMARTEDIT_MODELS\} is not set"):
        load_train_profile("production")
    with pytest.raises(ValueError, match="known profiles: \\['demo', 'production'\\]"):
        load_train_profile("staging")
    # deployed without SMARTEDIT_PROFILE: the placeholder reaches the run, which fails instead of training
    unrendered = _deploy_time(_train_trigger(), monkeypatch, None)["parameters"]["profile"]
    with pytest.raises(ValueError, match="deploy with SMARTEDIT_PROFILE set"):
        load_train_profile(unrendered)


def test_flow_refuses_tiny_under_production(prefect_harness, monkeypatch, tmp_path):
    from flows.train import train

    monkeypatch.setenv("SMARTEDIT_MODELS", str(tmp_path))
    with pytest.raises(ValueError, match="does not train preset 'tiny'"):
        train(profile="production", preset="tiny", manifests=[str(tmp_path)], output_dir=str(tmp_path / "run"))


def test_stack_deploys_with_the_demo_profile_unless_set(monkeypatch):
    from flows.stack import stack_env

    monkeypatch.delenv("SMARTEDIT_PROFILE", raising=False)
    assert stack_env()["SMARTEDIT_PROFILE"] == "demo"
    monkeypatch.setenv("SMARTEDIT_PROFILE", "production")
    assert stack_env()["SMARTEDIT_PROFILE"] == "production"
