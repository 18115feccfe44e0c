"""Pins the promotion gate at unit level: the tolerance boundary (a regression equal to the tolerance passes), the
direction of each metric, a missing candidate value, no champion, and what the registry records."""

from __future__ import annotations

import json

import pytest

from model.registry import ChampionRegistry, PromotionPolicy, decide, flatten_metrics

CHAMP = {"understanding.psnr": 22.0, "understanding.lpips": 0.100, "reasoning.clip": 20.0}
POLICY = dict(tolerances={"understanding.psnr": 0.25, "understanding.lpips": 0.005, "reasoning.clip": 0.25})


def _policy() -> PromotionPolicy:
    return PromotionPolicy(**POLICY)


def test_regression_exactly_at_the_tolerance_passes_and_just_beyond_fails():
    at = {**CHAMP, "understanding.psnr": 21.75}  # 0.25 worse: allowed (exact in binary floating point)
    assert decide(at, CHAMP, _policy()).promote
    beyond = {**CHAMP, "understanding.psnr": 21.74}
    decision = decide(beyond, CHAMP, _policy())
    assert not decision.promote
    assert any("understanding.psnr" in r and "> tolerance 0.25" in r for r in decision.reasons)


def test_lower_is_better_for_lpips_and_higher_for_psnr():
    better_lpips = {**CHAMP, "understanding.lpips": 0.050}
    assert decide(better_lpips, CHAMP, _policy()).promote
    worse_lpips = {**CHAMP, "understanding.lpips": 0.110}
    assert not decide(worse_lpips, CHAMP, _policy()).promote
    better_psnr = {**CHAMP, "understanding.psnr": 30.0}
    assert decide(better_psnr, CHAMP, _policy()).promote


def test_missing_values():
    no_cand = {k: v for k, v in CHAMP.items() if k != "reasoning.clip"}
    decision = decide(no_cand, CHAMP, _policy())
    assert not decision.promote and any("candidate has no value" in r for r in decision.reasons)
    no_champ_value = {k: v for k, v in CHAMP.items() if k != "reasoning.clip"}
    decision = decide(CHAMP, no_champ_value, _policy())
    assert decision.promote and any("champion has no value, not gated" in r for r in decision.reasons)
    assert decide(CHAMP, None, _policy()).promote and decide(CHAMP, {}, _policy()).promote


def test_default_policy_gates_both_groups_and_refuses_negative_tolerances():
    tol = PromotionPolicy().tolerances
    assert {k.split(".")[0] for k in tol} == {"understanding", "reasoning"}
    assert {k.split(".")[1] for k in tol} >= {"psnr", "ssim", "lpips", "clip"}
    with pytest.raises(ValueError, match="non-negative"):
        PromotionPolicy(tolerances={"understanding.psnr": -0.1})
    with pytest.raises(ValueError, match="no direction"):
        PromotionPolicy(tolerances={"understanding.fid": 1.0})


def test_registry_records_history_and_replaces_the_champion_only_on_promotion(tmp_path):
    reg = ChampionRegistry(tmp_path / "registry.json")
    assert reg.champion is None
    first = {"pipeline_dir": "a", "checkpoint": "a/ckpt", "metrics": CHAMP}
    reg.record(first, decide(CHAMP, None, _policy()))
    assert reg.champion["pipeline_dir"] == "a" and "decision" not in reg.champion
    worse = {**CHAMP, "understanding.psnr": 10.0}
    reg.record({"pipeline_dir": "b", "checkpoint": "b/ckpt", "metrics": worse}, decide(worse, CHAMP, _policy()))
    data = json.loads((tmp_path / "registry.json").read_text())
    assert data["champion"]["pipeline_dir"] == "a"
    assert [h["pipeline_dir"] for h in data["history"]] == ["a", "b"]
    assert [h["decision"]["promote"] for h in data["history"]] == [True, False]
    assert list(tmp_path.iterdir()) == [tmp_path / "registry.json"]  # written through a temp file and a rename


def test_flatten_metrics():
    assert flatten_metrics({"understanding": {"psnr": 1.0, "clip": None}, "reasoning": {"ssim": 0.5}}) == {
        "understanding.psnr": 1.0, "understanding.clip": None, "reasoning.ssim": 0.5}
