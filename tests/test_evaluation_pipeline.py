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


def test_evaluate_uses_the_saved_pipelines_inference_settings_unless_overridden(tmp_path):
    from model.config import tiny_config
    from model.evaluation.evaluate import evaluate
    from model.smartedit import build_smartedit

    config = tiny_config()
    pipe_dir = tmp_path / "pipe"
    pipeline.SmartEditPipeline(build_smartedit(config, for_inference=True)).save_pretrained(pipe_dir)
    bench = make_reason_edit(tmp_path / "bench", per_category=1, size=32)
    saved = evaluate(pipe_dir, bench, tmp_path / "a", judging_page=False, grids=False)
    assert {k: saved.settings[k] for k in ("num_inference_steps", "text_guidance_scale", "image_guidance_scale",
                                           "height", "width")} == {
        "num_inference_steps": config.sampling.num_inference_steps,
        "text_guidance_scale": config.sampling.text_guidance_scale,
        "image_guidance_scale": config.sampling.image_guidance_scale, "height": config.resolution,
        "width": config.resolution}
    with Image.open(tmp_path / "a" / saved.records[0].output) as out:
        assert out.size == (config.resolution, config.resolution)  # generated at the saved resolution
    override = evaluate(pipe_dir, bench, tmp_path / "b", editor_kwargs={"num_inference_steps": 1},
                        judging_page=False, grids=False)
    assert override.settings["num_inference_steps"] == 1 and override.settings["height"] == config.resolution
    md = (tmp_path / "b" / "report.md").read_text()
    assert "| num_inference_steps | `1` |" in md and f"| text_guidance_scale | `{config.sampling.text_guidance_scale}` |" in md


def test_baselines_are_evaluable_like_any_model(tmp_path):
    from model.evaluation.baselines import random_recolour
    from model.evaluation.evaluate import evaluate, load_editor

    bench = make_reason_edit(tmp_path / "bench", per_category=1, size=32)
    image = Image.open(bench / "4-Color" / "001.png").convert("RGB")
    assert np.array_equal(np.asarray(load_editor("identity")(image, "x")), np.asarray(image))
    a = random_recolour(image, "x", generator=torch.Generator().manual_seed(0))
    b = random_recolour(image, "x", generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(image))
    report = evaluate("baseline:random-recolour", bench, tmp_path / "out", judging_page=False, grids=False)
    assert report.config["model_fingerprint"] == "baseline:random-recolour"
    assert all(r.fg_change > 0.02 for r in report.records) and all(r.psnr < 40 for r in report.records)
    with pytest.raises(FileNotFoundError, match="or a built-in baseline: identity, random-recolour"):
        load_editor(tmp_path / "missing")
