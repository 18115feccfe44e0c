"""The promotion gate of scheduled retraining and the champion registry file."""

import json

import pytest

from model.registry import ChampionRegistry, PromotionPolicy, decide, flatten_metrics

CHAMPION = {"understanding.psnr": 22.0, "understanding.lpips": 0.080, "reasoning.clip": 20.0}
POLICY = PromotionPolicy(tolerances={"understanding.psnr": 0.2, "understanding.lpips": 0.005, "reasoning.clip": 0.3})


def test_better_candidate_is_promoted():
    better = {"understanding.psnr": 22.5, "understanding.lpips": 0.070, "reasoning.clip": 21.0}
    assert decide(better, CHAMPION, POLICY).promote


def test_worse_beyond_tolerance_is_refused_and_says_why():
    worse = {"understanding.psnr": 21.7, "understanding.lpips": 0.080, "reasoning.clip": 20.0}
    decision = decide(worse, CHAMPION, POLICY)
    assert not decision.promote
    assert any("understanding.psnr" in r and "> tolerance 0.2" in r for r in decision.reasons)


def test_lower_is_better_metrics_gate_the_other_way():
    assert not decide({**CHAMPION, "understanding.lpips": 0.090}, CHAMPION, POLICY).promote
    assert decide({**CHAMPION, "understanding.lpips": 0.050}, CHAMPION, POLICY).promote


def test_within_tolerance_is_promoted():
    within = {"understanding.psnr": 21.85, "understanding.lpips": 0.084, "reasoning.clip": 19.8}
    assert decide(within, CHAMPION, POLICY).promote


def test_missing_candidate_metric_is_refused_and_no_champion_promotes():
    assert not decide({"understanding.psnr": 23.0}, CHAMPION, POLICY).promote
    assert decide({"understanding.psnr": 1.0}, None, POLICY).promote


def test_policy_validation():
    with pytest.raises(ValueError, match="non-negative"):
        PromotionPolicy(tolerances={"understanding.psnr": -1})
    with pytest.raises(ValueError, match="no direction"):
        PromotionPolicy(tolerances={"understanding.fid": 1})


def test_flatten_metrics():
    assert flatten_metrics({"understanding": {"psnr": 1.0}, "reasoning": {"clip": None}}) == {
        "understanding.psnr": 1.0, "reasoning.clip": None}


def test_registry_records_history_and_champion(tmp_path):
    reg = ChampionRegistry(tmp_path / "registry.json")
    assert reg.champion is None
    first = {"pipeline": "runs/a", "metrics": CHAMPION, "manifests": {"x": "sha"}}
    reg.record(first, decide(CHAMPION, None, POLICY))
    assert reg.champion["pipeline"] == "runs/a"
    worse = {"pipeline": "runs/b", "metrics": {**CHAMPION, "understanding.psnr": 10.0}}
    reg.record(worse, decide(worse["metrics"], reg.champion["metrics"], POLICY))
    data = json.loads((tmp_path / "registry.json").read_text())
    assert data["champion"]["pipeline"] == "runs/a"
    assert [h["decision"]["promote"] for h in data["history"]] == [True, False]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        ChampionRegistry(tmp_path / "bad.json").load()
