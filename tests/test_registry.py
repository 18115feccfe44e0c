"""The promotion gate's decision at unit level (paired bootstrap, identity, anchor, NaN, availability) and the
champion registry file (lock, atomic writes, anchor)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.evaluation.gate import GatePolicy, GateUnavailable, bootstrap_ci, compare, decide
from model.registry import ChampionRegistry

N = 40


def items(psnr, clip_direction=None, fg_change=0.3, **extra) -> list[dict]:
    """Per-item results as the evaluation stores them."""
    out = []
    for i in range(N):
        item = {"key": f"c/{i:03d}", "seed": 0, "group": "understanding", "psnr": float(psnr[i]),
                "fg_change": float(fg_change[i]) if isinstance(fg_change, np.ndarray) else fg_change}
        if clip_direction is not None:
            item["clip_direction"] = float(clip_direction[i])
        out.append({**item, **{k: (v[i] if isinstance(v, (list, np.ndarray)) else v) for k, v in extra.items()}})
    return out


RNG = np.random.default_rng(0)
BASE_PSNR = 22 + RNG.normal(0, 2, N)
DIRECTION = 0.2 + RNG.normal(0, 0.05, N)
IDENTITY = items(np.full(N, 100.0), np.zeros(N), fg_change=0.0)


def test_bootstrap_interval_matches_the_normal_approximation_for_a_large_sample():
    rng = np.random.default_rng(1)
    d = rng.normal(0.5, 2.0, 4000)
    low, high = bootstrap_ci(d, GatePolicy())
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)  # independent: CLT interval of the mean
    assert low == pytest.approx(d.mean() - half, abs=0.01) and high == pytest.approx(d.mean() + half, abs=0.01)
    assert bootstrap_ci([0.3] * 5, GatePolicy()) == (0.3, 0.3)  # no spread: the point itself


def test_identity_never_beats_itself_and_is_refused_against_any_editor():
    # identity as candidate: no edit, and against itself the paired differences are all zero
    first = decide(IDENTITY, IDENTITY, {}, GatePolicy())
    assert not first.promote and first.edit_rate == 0.0
    assert "does not beat the identity baseline on clip_direction" in first.reasons
    for champion_direction in (DIRECTION, -DIRECTION, np.zeros(N)):  # a good, a bad, a useless champion
        champion = items(BASE_PSNR, champion_direction)
        assert not decide(IDENTITY, IDENTITY, {"champion": champion}, GatePolicy()).promote


def test_first_run_promotes_only_what_beats_identity_on_instruction_following():
    good = items(BASE_PSNR, DIRECTION)
    assert decide(good, IDENTITY, {}, GatePolicy()).promote
    pointless = items(BASE_PSNR, RNG.normal(0, 0.05, N))  # edits, but in no particular direction
    decision = decide(pointless, IDENTITY, {}, GatePolicy())
    assert not decision.promote and decision.comparisons[0].verdict == "no significant difference"


def test_better_candidate_is_promoted_and_significantly_worse_is_refused():
    champion = items(BASE_PSNR, DIRECTION)
    better = items(BASE_PSNR + 0.5, DIRECTION + 0.02)
    assert decide(better, IDENTITY, {"champion": champion}, GatePolicy()).promote
    worse = items(BASE_PSNR - 1.0 + RNG.normal(0, 0.3, N), DIRECTION)
    decision = decide(worse, IDENTITY, {"champion": champion}, GatePolicy())
    assert not decision.promote
    c = next(c for c in decision.comparisons if c.metric == "psnr")
    assert c.verdict == "worse" and c.high < 0 and c.mean == pytest.approx(float(np.mean(
        [w["psnr"] - b["psnr"] for w, b in zip(worse, champion)])))
    # lower-is-better metrics are oriented: a higher L1 is worse
    with_l1 = items(BASE_PSNR, DIRECTION, l1=np.full(N, 0.10) + RNG.normal(0, 0.001, N))
    higher_l1 = items(BASE_PSNR, DIRECTION, l1=np.full(N, 0.12) + RNG.normal(0, 0.001, N))
    assert compare(higher_l1, with_l1, "l1", GatePolicy(), "champion").verdict == "worse"


def test_regressions_cannot_stack_because_the_anchor_is_compared_too():
    """Ten promotions each 0.24 dB worse: never significant against the current champion (noise), but the
    comparison with the anchor (first champion) refuses once the drift adds up."""
    rng = np.random.default_rng(3)
    anchor = items(BASE_PSNR, DIRECTION)
    previous, refused_at = anchor, None
    for step in range(1, 11):
        candidate = items(BASE_PSNR - 0.24 * step + rng.normal(0, 1.0, N), DIRECTION)
        vs_champion = compare(candidate, previous, "psnr", GatePolicy(), "champion")
        assert vs_champion.verdict != "worse"  # each step alone would pass a paired test
        decision = decide(candidate, IDENTITY, {"champion": previous, "anchor": anchor}, GatePolicy())
        if not decision.promote:
            refused_at = step
            assert any(c.reference == "anchor" and c.verdict == "worse" for c in decision.comparisons)
            break
        previous = candidate
    assert refused_at is not None and refused_at <= 8


def test_nan_metrics_fail_the_gate():
    bad = items(BASE_PSNR, DIRECTION)
    bad[3]["psnr"] = math.nan
    decision = decide(bad, IDENTITY, {}, GatePolicy())
    assert not decision.promote and decision.reasons[0].startswith("NaN in the candidate's psnr")


def test_gate_needs_instruction_following_metrics_unless_fidelity_only_is_allowed():
    fidelity_only = items(BASE_PSNR)
    with pytest.raises(GateUnavailable, match="give clip_dir"):
        decide(fidelity_only, items(np.full(N, 100.0), fg_change=0.0), {}, GatePolicy())
    decision = decide(fidelity_only, items(np.full(N, 100.0), fg_change=0.0), {}, GatePolicy(allow_fidelity_only=True))
    assert decision.mode == "fidelity-only" and decision.promote  # it edits: fg_change beats identity's 0
    assert "fg_change vs identity" in " ".join(decision.reasons)


def test_policy_validation():
    with pytest.raises(ValueError, match="unknown metric 'fid'"):
        GatePolicy(margins={"fid": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        GatePolicy(margins={"psnr": -1.0})
    with pytest.raises(ValueError, match="confidence"):
        GatePolicy(confidence=1.5)


# ---------------------------------------------------------------- registry file
def test_registry_records_history_champion_and_anchor(tmp_path):
    reg = ChampionRegistry(tmp_path / "registry.json")
    assert reg.champion is None and reg.anchor is None
    reg.record({"pipeline": "runs/a", "items": [{"key": "k", "seed": 0, "psnr": 20.0}]}, {"promote": True})
    reg.record({"pipeline": "runs/b", "items": [{"key": "k", "seed": 0, "psnr": math.nan}]}, {"promote": False})
    reg.record({"pipeline": "runs/c"}, {"promote": True})
    data = json.loads((tmp_path / "registry.json").read_text())
    assert data["champion"]["pipeline"] == "runs/c" and data["anchor"]["pipeline"] == "runs/a"
    assert [h["decision"]["promote"] for h in data["history"]] == [True, False, True]
    assert data["history"][1]["items"][0]["psnr"] is None  # NaN is not JSON: stored as null
    reg.refresh("anchor", {"settings": {"seeds": [1]}})
    assert reg.anchor["settings"] == {"seeds": [1]} and reg.anchor["pipeline"] == "runs/a"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_registry_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a champion registry"):
        ChampionRegistry(tmp_path / "bad.json").load()
    (tmp_path / "cut.json").write_text('{"champion": null, "hist')
    with pytest.raises(ValueError, match="cut.json: registry is not valid JSON"):
        ChampionRegistry(tmp_path / "cut.json").load()


WRITER = """
import sys
from model.registry import ChampionRegistry
path, who, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reg = ChampionRegistry(path)
for i in range(n):
    reg.record({"pipeline": f"w{who}-{i}", "items": [{"key": str(k), "seed": 0, "psnr": 1.0} for k in range(50)]},
               {"promote": i % 2 == 0})
"""


def test_concurrent_writers_lose_nothing_and_never_corrupt_the_file(tmp_path):
    """Three processes append 15 decisions each at the same time (separate interpreters, as two flow runs are)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = str(tmp_path / "registry.json")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(w), "15"], env=env, stderr=subprocess.PIPE)
             for w in range(3)]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    data = json.loads((tmp_path / "registry.json").read_text())
    assert sorted(h["pipeline"] for h in data["history"]) == sorted(f"w{w}-{i}" for w in range(3) for i in range(15))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_candidate_that_edits_too_few_items_is_refused_even_when_it_beats_identity():
    # 40 % of the items change their edit region (fg_change 0.3), 60 % are left untouched (0.0); the edited ones
    # move strongly in the instruction's direction, so the mean still beats identity — only the edit rate refuses it.
    edited = np.arange(N) < int(0.4 * N)
    direction = np.where(edited, 0.5 + RNG.normal(0, 0.05, N), 0.0)
    few = items(BASE_PSNR, direction, fg_change=np.where(edited, 0.3, 0.0))
    decision = decide(few, IDENTITY, {}, GatePolicy())
    assert decision.edit_rate == pytest.approx(0.4)
    assert any(c.verdict == "better" for c in decision.comparisons)  # it does beat identity on the mean
    assert not decision.promote and any(r.startswith("edits nothing") for r in decision.reasons)
    assert decide(few, IDENTITY, {}, GatePolicy(min_edit_rate=0.4)).promote  # the threshold is what decides


def test_registry_refresh_takes_only_the_champion_or_the_anchor(tmp_path):
    reg = ChampionRegistry(tmp_path / "registry.json")
    with pytest.raises(ValueError, match="role 'history'"):
        reg.refresh("history", {"settings": {}})
