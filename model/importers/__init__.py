"""Importers: upstream checkpoint formats → this project's layouts, and back (``export``).

    from model.importers import import_checkpoint, export_checkpoint
    report = import_checkpoint("smartedit-official", "ckpt/SmartEdit-7B", "pipes/smartedit-7b",
                               vicuna="ckpt/vicuna-7b-v1-1", clip_vision="ckpt/clip-vit-large-patch14",
                               sd="ckpt/instruct-pix2pix")
    export_checkpoint("smartedit-official", "pipes/smartedit-7b", "out/SmartEdit-7B", step=15000)

One file per format. Adding a format = one module with ``DESCRIPTION``, ``add_arguments(parser)``,
``import_checkpoint(source, out, **options) -> MappingReport`` (and optionally ``add_export_arguments`` /
``export_checkpoint``) + one line in ``FORMATS``. Modules import torch & co. lazily so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from model.importers.mapping import KeyMapping, MappingReport, load_weights

#: format name → module implementing it (imported on first use).
FORMATS: dict[str, str] = {
    "smartedit-official": "model.importers.smartedit_official",
    "llava-original": "model.importers.llava_original",
    "instructdiffusion-ldm": "model.importers.ldm_unet",
    "mgie-official": "model.importers.mgie_official",
}

REPORT_NAME = "import_report.json"

__all__ = ["FORMATS", "KeyMapping", "MappingReport", "export_checkpoint", "get_format", "import_checkpoint",
           "load_weights"]


def get_format(name: str) -> ModuleType:
    """The module of format ``name``; an unknown name lists the choices."""
    if name not in FORMATS:
        raise ValueError(f"unknown checkpoint format {name!r}; choose one of {sorted(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def import_checkpoint(fmt: str, source: str | Path, out: str | Path, **options: Any) -> MappingReport:
    """Convert ``source`` (format ``fmt``) into ``out``; writes ``out/import_report.json`` and returns the report."""
    report = get_format(fmt).import_checkpoint(Path(source), Path(out), **options)
    report.write(Path(out) / REPORT_NAME)
    return report


def export_checkpoint(fmt: str, source: str | Path, out: str | Path, **options: Any) -> MappingReport:
    """Write this project's ``source`` folder in format ``fmt`` under ``out`` (formats that support it)."""
    module = get_format(fmt)
    if not hasattr(module, "export_checkpoint"):
        raise ValueError(f"format {fmt!r} has no export direction")
    return module.export_checkpoint(Path(source), Path(out), **options)
