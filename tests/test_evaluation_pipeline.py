"""evaluate() on a real (tiny, random) SmartEditPipeline saved to disk: from_pretrained, seeded calls, the
list the pipeline returns, and the report. 64 px and one sampling step keep it to seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evaluation_fixtures import make_reason_edit
from PIL import Image

import model.pipeline as pipeline  # a direct import: a broken module must fail, not skip

torch.set_num_threads(2)


def test_evaluate_a_saved_tiny_pipeline(tmp_path):
    from model.config import tiny_config
    from model.evaluation.evaluate import evaluate
    from model.smartedit import build_smartedit

    pipe_dir = tmp_path / "pipe"
    pipeline.SmartEditPipeline(build_smartedit(tiny_config(), for_inference=True)).save_pretrained(pipe_dir)
    bench = make_reason_edit(tmp_path / "bench", per_category=1, size=64)
    kwargs = {"num_inference_steps": 1, "height": 64, "width": 64}
    report = evaluate(pipe_dir, bench, tmp_path / "out", seeds=(3,), editor_kwargs=kwargs, grids=False)

    assert len(report.records) == 6 and set(report.groups) == {"understanding", "reasoning"}
    assert all(r.psnr is not None and r.ssim is not None for r in report.records)
    assert report.config["editor_kwargs"] == kwargs
    record = next(r for r in report.records if r.category == "6-Reasoning")
    saved = np.asarray(Image.open(tmp_path / "out" / record.output))
    # the saved output is the pipeline's own result for that seed
    pipe = pipeline.SmartEditPipeline.from_pretrained(pipe_dir)
    image = Image.open(bench / "6-Reasoning" / "001.png").convert("RGB")
    again = pipe(image, record.instruction, generator=torch.Generator().manual_seed(3), **kwargs)[0]
    assert saved.shape == (64, 64, 3) and np.array_equal(saved, np.asarray(again))
    assert (tmp_path / "out" / "judging.html").is_file()
