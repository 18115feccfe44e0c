"""Image grids for eyeballing results: one PNG per category, a row per item: input | output | mask | instruction."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from model.evaluation.reason_edit import EditItem
    from model.evaluation.report import ItemRecord

logger = logging.getLogger(__name__)


def _text_panel(text: str, width: int, height: int) -> Image.Image:
    from PIL import Image, ImageDraw, ImageFont

    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=max(10, height // 12))
    chars_per_line = max(10, int(width / (font.size * 0.55)))
    draw.multiline_text((6, 6), textwrap.fill(text, chars_per_line), fill="black", font=font, spacing=3)
    return panel


def write_category_grids(
    items: list[EditItem],
    records: list[ItemRecord],
    report_dir: Path | str,
    thumb: int = 128,
) -> list[Path]:
    """``grid_<category>.png`` under ``report_dir/grids``; the first seed's output of each item is shown.

    ``records[i].output`` is relative to ``report_dir``.
    """
    from PIL import Image

    report_dir = Path(report_dir)
    out_dir = report_dir / "grids"
    out_dir.mkdir(parents=True, exist_ok=True)
    first_output: dict[str, str] = {}
    for r in sorted(records, key=lambda r: r.seed):
        first_output.setdefault(r.key, r.output)
    by_cat: dict[str, list[EditItem]] = {}
    for item in items:
        if item.key in first_output:
            by_cat.setdefault(item.category, []).append(item)
    written = []
    for category, cat_items in by_cat.items():
        width = thumb * 5
        grid = Image.new("RGB", (width, thumb * len(cat_items)), "white")
        for row, item in enumerate(cat_items):
            y = row * thumb
            with Image.open(report_dir / first_output[item.key]) as out:
                output = out.convert("RGB")
            tiles = [item.load_image(), output, item.load_mask().convert("RGB")]
            for col, tile in enumerate(tiles):
                grid.paste(tile.resize((thumb, thumb), Image.Resampling.BICUBIC), (col * thumb, y))
            grid.paste(_text_panel(item.instruction, thumb * 2, thumb), (thumb * 3, y))
        path = out_dir / f"grid_{category}.png"
        grid.save(path)
        written.append(path)
    logger.info("wrote %d category grids to %s", len(written), out_dir)
    return written
