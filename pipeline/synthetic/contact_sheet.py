"""A contact sheet for any edit-pair shards: one row per pair, source | mask | target | instruction."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from pipeline.storage import as_path, is_remote
from pipeline.synthetic.export import read_samples


def _tile(data: bytes | None, size: int, mode: str = "RGB"):
    from PIL import Image, ImageOps

    if data is None:
        return Image.new("RGB", (size, size), (90, 90, 90))
    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.pad(im.convert(mode).convert("RGB"), (size, size), color=(40, 40, 40))


def contact_sheet(path: Path | str, out: Path | str, n: int = 16, tile: int = 160, text_width: int = 360) -> Path:
    """Render the first ``n`` pairs of ``path`` (shard, dataset dir or shardindex.json; local or a bucket URL) to
    ``out`` (PNG, local or a bucket URL)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = list(read_samples(path, limit=n))
    if not rows:
        raise ValueError(f"{path}: no samples to show")
    pad = 4
    width = 3 * (tile + pad) + text_width + pad
    sheet = Image.new("RGB", (width, len(rows) * (tile + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for r, (key, meta, files) in enumerate(rows):
        y = pad + r * (tile + pad)
        src = next((v for k, v in sorted(files.items()) if k.startswith("src.")), None)
        tgt = next((v for k, v in sorted(files.items()) if k.startswith("tgt.")), None)
        for c, (data, mode) in enumerate(((src, "RGB"), (files.get("mask.png"), "L"), (tgt, "RGB"))):
            sheet.paste(_tile(data, tile, mode), (pad + c * (tile + pad), y))
        lines = [key, ""] + textwrap.wrap(str(meta.get("instruction", "")), 44)
        extra = " · ".join(str(meta[k]) for k in ("scenario", "operation") if meta.get(k))
        if extra:
            lines += ["", extra]
        draw.multiline_text((3 * (tile + pad) + pad, y + 2), "\n".join(lines), fill=(0, 0, 0), font=font)
    from pipeline.writer import atomic_write_bytes

    buf = io.BytesIO()  # PIL encodes into memory; the writer puts the bytes in place atomically, locally or on a bucket
    sheet.save(buf, "PNG")
    out = as_path(out)
    if not is_remote(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out
