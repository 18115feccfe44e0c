"""Calibration from labels: thresholds for a target precision, measured precision in the data card, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.synthetic.build import BuildInputs, build
from pipeline.synthetic.calibrate import JUDGEMENTS_FORMAT, choose_threshold, labelling_entries, load_labels
from pipeline.synthetic.config import SCENARIOS, SyntheticConfig
from pipeline.synthetic.export import read_samples
from synthetic_fixtures import make_scenes


def test_choose_threshold_is_the_loosest_that_reaches_the_target():
    # (score, good), lower is better: the 4 best are 3 good + 1 bad (75 %), the 3 best all good
    values = [(1.0, True), (2.0, True), (3.0, True), (4.0, False), (5.0, True), (6.0, False)]
    assert choose_threshold(values, False, 0.75, 1) == {"threshold": 5.0, "passing": 5, "precision": 0.8}
    assert choose_threshold(values, False, 1.0, 1) == {"threshold": 3.0, "passing": 3, "precision": 1.0}
    assert choose_threshold(values, False, 1.0, 4) is None  # too few pairs at 100 %
    # higher is better; tied scores are decided together
    assert choose_threshold([(0.9, True), (0.5, False), (0.5, True)], True, 0.9, 1)["threshold"] == 0.9


def test_labels_from_judging_page_exports_majority_vote(tmp_path):
    a = {"format": JUDGEMENTS_FORMAT, "judge": "a", "judgements": [
        {"key": "k1", "seed": 0, "category": "c", "group": "kept", "follows": True},
        {"key": "k2", "seed": 0, "category": "c", "group": "kept", "follows": False}]}
    b = {"labels": {"k1": True, "k2": True, "k3": False}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert load_labels([tmp_path / "a.json", tmp_path / "b.json"]) == {"k1": True, "k2": False, "k3": False}
    (tmp_path / "bad.json").write_text(json.dumps({"judgements": []}))
    with pytest.raises(ValueError, match="format"):
        load_labels([tmp_path / "bad.json"])


def test_calibrate_cli_writes_thresholds_and_measured_precision(tmp_path, capsys):
    from smartedit_cli.main import main

    out = tmp_path / "built"
    build(SyntheticConfig(scenarios={s: 10 for s in SCENARIOS}, remove_ring_max_de=50.0,
                          leakage_guard=False),
          BuildInputs(input=str(make_scenes(tmp_path / "scenes"))), out)
    kept = list(read_samples(out))
    removals = sorted(m["scores"]["ring_de_p90"] for k, m, _ in kept if m["operation"] == "remove")
    assert len(set(removals)) >= 2
    cut = removals[len(removals) // 2]
    # a labeller who calls a removal good when its fill is close to the background (ring ΔE below the median)
    labels = {k: (m["scores"]["ring_de_p90"] < cut if m["operation"] == "remove" else True) for k, m, _ in kept}
    (tmp_path / "labels.json").write_text(json.dumps({"labels": labels}))
    assert main(["synthetic", "calibrate", str(tmp_path / "labels.json"), "--dataset", str(out),
                 "--min-support", "1", "--target-precision", "1.0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    good = sum(labels.values())
    assert printed["measured"]["all"] == {"labelled": len(kept), "good": good, "precision": round(good / len(kept), 4)}
    for scenario in {m["scenario"] for _, m, _ in kept}:
        rows = [labels[k] for k, m, _ in kept if m["scenario"] == scenario]
        assert printed["measured"]["scenario"][scenario]["precision"] == round(sum(rows) / len(rows), 4)
    # 100 % precision: the loosest threshold keeps every good removal and stops below the first bad one
    assert printed["config_overrides"]["remove_ring_max_de"] == max(r for r in removals if r < cut)
    card = (out / "DATA_CARD.md").read_text()
    assert "## Measured precision (from labels)" in card and "| scenario left_right |" in card
    assert json.loads((out / "calibration.json").read_text())["labels"] == len(labels)

    assert main(["synthetic", "label", str(out), "-o", str(tmp_path / "label.html")]) == 0
    page = (tmp_path / "label.html").read_text()
    assert JUDGEMENTS_FORMAT in page and kept[0][0] in page  # the judging page, whose export calibrate reads
    entries = labelling_entries(out, tmp_path / "page")
    assert {e["key"] for e in entries if e["group"] == "kept"} == set(labels)
    assert all(Path(e["input_image"]).is_file() and Path(e["output_image"]).is_file() for e in entries)
