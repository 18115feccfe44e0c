"""What makes two evaluations comparable, recorded with every evaluation and checked before a comparison.

Two evaluations may be compared item by item only if they ran on the same benchmark content (hash of every image,
mask, target and text), under the same protocol, resolution, sampling steps, guidance scales and seeds, and were
scored by the same metric models. ``differences`` names what differs; the gate re-evaluates the champion when
anything does, instead of reusing stored numbers.

Inference settings: ``evaluate`` uses the saved pipeline's own (``SmartEditConfig.sampling``: steps and guidance
scales, and ``SmartEditConfig.resolution``) unless overridden, and records them explicitly; an editor without a config
(any callable with the ``SmartEditPipeline`` call shape, e.g. MGIE) contributes its call signature's defaults.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

INFERENCE_KEYS = ("num_inference_steps", "text_guidance_scale", "image_guidance_scale", "height", "width")
SETTING_KEYS = ("benchmark_hash", "protocol", "metric_size", "num_inference_steps", "text_guidance_scale",
                "image_guidance_scale", "height", "width", "seeds", "metric_models")


def _call_parameters(editor: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    target = editor if inspect.isfunction(editor) or inspect.ismethod(editor) else getattr(editor, "__call__", editor)
    try:
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}, True
    return params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def inference_settings(editor: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments every editor call gets: the saved pipeline's settings, then ``overrides``.

    Only names the editor's call accepts are kept: a baseline such as ``identity`` takes none, so sampling
    overrides do not apply to it.
    """
    params, var_kw = _call_parameters(editor)
    settings: dict[str, Any] = {}
    for name in INFERENCE_KEYS:
        if name in params and params[name].default not in (inspect.Parameter.empty, None):
            settings[name] = params[name].default
    config = getattr(getattr(editor, "model", None), "config", None)
    if config is not None:
        sampling = getattr(config, "sampling", config)  # SmartEditConfig.sampling (SamplingConfig), or flat
        for name in ("num_inference_steps", "text_guidance_scale", "image_guidance_scale"):
            if getattr(sampling, name, None) is not None and (name in params or var_kw):
                settings[name] = getattr(sampling, name)
        resolution = getattr(config, "resolution", None)
        if resolution is not None:
            for name in ("height", "width"):
                if name in params or var_kw:
                    settings[name] = int(resolution)
    settings.update({k: v for k, v in (overrides or {}).items() if k in params or var_kw})
    return settings


def fingerprint(path: Path | str | None) -> str | None:
    """``<path>@<first 16 hex of a stat fingerprint>`` of a model directory (cheap: no file is read)."""
    if path is None:
        return None
    from pipeline.fingerprint import tree_fingerprint

    path = Path(path)
    return f"{path}@{tree_fingerprint(path)[:16]}" if path.exists() else str(path)


def differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """Setting names whose values differ between two evaluations' settings (all of them if one is missing)."""
    if not a or not b:
        return ["settings not recorded"]
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in SETTING_KEYS if a.get(k) != b.get(k)]
