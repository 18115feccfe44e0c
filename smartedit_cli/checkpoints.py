"""``smartedit import-checkpoint FORMAT SOURCE --out DIR`` and ``smartedit export-checkpoint FORMAT DIR --out DIR``.

    smartedit import-checkpoint smartedit-official ckpt/SmartEdit-7B --out pipes/smartedit-7b \\
        --vicuna ckpt/vicuna-7b-v1-1 --clip-vision ckpt/clip-vit-large-patch14 --sd ckpt/instruct-pix2pix
    smartedit edit --model pipes/smartedit-7b --image in.png --instruction "..." -o out.png

Each format adds its own options (``model/importers/<format>.py``: ``add_arguments``); the formats are listed
in ``model.importers.FORMATS``.
"""

from __future__ import annotations

import argparse
import logging

from model.importers import FORMATS, export_checkpoint, get_format, import_checkpoint

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``import-checkpoint`` and ``export-checkpoint`` with one sub-command per format."""
    imp = subparsers.add_parser("import-checkpoint", help="convert released upstream weights into this project's "
                                "layout (SmartEditPipeline folder, LLaVA or UNet dir)")
    formats = imp.add_subparsers(dest="format", required=True, metavar="FORMAT")
    exp = subparsers.add_parser("export-checkpoint", help="write a SmartEditPipeline folder in an upstream layout")
    exp_formats = exp.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name in FORMATS:
        module = get_format(name)
        p = formats.add_parser(name, help=module.DESCRIPTION)
        p.add_argument("source", help="the upstream checkpoint (folder or file)")
        p.add_argument("--out", required=True, help="output folder")
        module.add_arguments(p)
        p.set_defaults(func=_run_import)
        if hasattr(module, "add_export_arguments"):
            e = exp_formats.add_parser(name, help=f"export to {name}")
            e.add_argument("source", help="folder written by import-checkpoint / SmartEditPipeline.save_pretrained")
            e.add_argument("--out", required=True, help="output folder")
            module.add_export_arguments(e)
            e.set_defaults(func=_run_export)


def _options(args: argparse.Namespace) -> dict:
    skip = {"func", "format", "source", "out", "command", "verbose"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def _run_import(args: argparse.Namespace) -> int:
    report = import_checkpoint(args.format, args.source, args.out, **_options(args))
    logger.info("%s", report.summary())
    logger.info("wrote %s (mapping report: import_report.json)", args.out)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    report = export_checkpoint(args.format, args.source, args.out, **_options(args))
    logger.info("%s", report.summary())
    return 0
