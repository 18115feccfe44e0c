"""Pins training-side behaviours: COCO-Stuff's unlabeled value 255 is never an overlay class; checkpoints are written
to a temporary directory and renamed only when complete."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from model import checkpoint as ckpt
from model.overlay import blend_overlay, labelmap_edit


def _image(size: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_labelmap_overlay_never_marks_class_255():
    image = _image()
    labels = np.full((12, 12), 255, np.uint8)  # mostly unlabeled
    labels[:2] = 7
    classes = [{"id": 255, "name": "unlabeled"}, {"id": 7, "name": "train"}]
    for seed in range(25):
        edit = labelmap_edit(image, labels, classes, np.random.default_rng(seed))
        assert "unlabeled" not in edit.instruction and "train" in edit.instruction
        changed = np.any(edit.target != image, axis=-1)
        assert not changed[labels == 255].any()  # the unlabeled area is never overlaid
        assert np.array_equal(edit.target, blend_overlay(image, labels == 7, _color(edit)))


def test_labelmap_with_only_unlabeled_is_an_identity_edit():
    image = _image()
    labels = np.full((12, 12), 255, np.uint8)
    edit = labelmap_edit(image, labels, [{"id": 255, "name": "unlabeled"}], np.random.default_rng(0))
    assert edit.identity and np.array_equal(edit.target, image) and "unlabeled" not in edit.instruction


def test_absent_class_pick_never_uses_255():
    image = _image()
    labels = np.full((12, 12), 3, np.uint8)
    names = {3: "car", 255: "unlabeled", 9: "boat"}
    for seed in range(25):
        edit = labelmap_edit(image, labels, [{"id": 3, "name": "car"}], np.random.default_rng(seed),
                             absent_class_prob=1.0, class_names=names)
        assert edit.identity and "boat" in edit.instruction and "unlabeled" not in edit.instruction


def _color(edit):
    from model.overlay import load_templates

    return load_templates().colors[edit.color]


# -- checkpoints --------------------------------------------------------------------------------------------------------
def _parts():
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return layer, opt, sched


def test_checkpoint_is_written_to_tmp_then_renamed_complete(tmp_path, monkeypatch):
    layer, opt, sched = _parts()
    renames = []
    real = os.replace

    def spy(src, dst):
        src_p = type(tmp_path)(src)
        renames.append((src_p.name, type(tmp_path)(dst).name, sorted(p.name for p in src_p.iterdir())))
        assert not type(tmp_path)(dst).exists()
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", spy)
    final = ckpt.save_checkpoint(tmp_path, 5, trainable=dict(layer.named_parameters()), optimizer=opt, scheduler=sched,
                                 state={"stage": 2})
    assert renames == [("step-00000005.tmp", "step-00000005",
                        ["optimizer.pt", "rng", "scheduler.pt", "state.json", "trainable.safetensors"])]
    assert final == tmp_path / "checkpoints" / "step-00000005" and not final.with_name(final.name + ".tmp").exists()
    assert json.loads((final / "state.json").read_text()) == {"stage": 2, "step": 5}
    assert torch.equal(ckpt.load_trainable(final)["weight"], layer.weight.detach())


def test_crash_mid_checkpoint_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    layer, opt, sched = _parts()
    ckpt.save_checkpoint(tmp_path, 1, trainable=dict(layer.named_parameters()), optimizer=opt, scheduler=sched, state={})

    class Boom(RuntimeError):
        pass

    def boom():
        raise Boom("disk full")

    monkeypatch.setattr(sched, "state_dict", boom)
    with pytest.raises(Boom):
        ckpt.save_checkpoint(tmp_path, 2, trainable=dict(layer.named_parameters()), optimizer=opt, scheduler=sched,
                             state={})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000002.tmp"]
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-00000001"
    assert ckpt.resolve_resume("latest", tmp_path) == root / "step-00000001"
    monkeypatch.undo()
    again = ckpt.save_checkpoint(tmp_path, 2, trainable=dict(layer.named_parameters()), optimizer=opt,
                                 scheduler=sched, state={})
    assert ckpt.latest_checkpoint(tmp_path) == again and not (root / "step-00000002.tmp").exists()
