"""Load any saved editing pipeline folder: SmartEditPipeline or MGIEPipeline, chosen by ``model_index.json``'s
``_class_name`` (written by both ``save_pretrained``), so `smartedit edit` and evaluation take either."""

from __future__ import annotations

import json
from pathlib import Path

PIPELINE_CLASSES = {
    "SmartEditPipeline": ("model.pipeline", "SmartEditPipeline"),
    "MGIEPipeline": ("model.mgie.pipeline", "MGIEPipeline"),
}


def pipeline_class_name(directory: str | Path) -> str:
    """The pipeline class a folder was saved from ('SmartEditPipeline' when model_index.json is missing or old)."""
    index = Path(directory) / "model_index.json"
    if not index.is_file():
        return "SmartEditPipeline"  # its from_pretrained then names the missing file
    name = json.loads(index.read_text()).get("_class_name", "SmartEditPipeline")
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"{index}: field '_class_name' is {name!r}; expected one of {sorted(PIPELINE_CLASSES)}")
    return name


def load_pipeline(directory: str | Path, device: str = "cpu", dtype=None):
    """``<Class>.from_pretrained(directory, device, dtype)`` for the class recorded in the folder. A pipeline URL
    on a bucket (``s3://bucket/runs/x/pipeline``, uploaded with its ``_COMPLETE`` marker) is downloaded into
    ``$SMARTEDIT_CACHE/downloads`` first (pipeline/remote_dirs.py)."""
    import importlib

    from pipeline.remote_dirs import local_copy

    directory = local_copy(directory)

    module, cls = PIPELINE_CLASSES[pipeline_class_name(directory)]
    return getattr(importlib.import_module(module), cls).from_pretrained(directory, device=device, dtype=dtype)
