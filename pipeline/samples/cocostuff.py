"""COCO-Stuff 164k label maps: ``cocostuff/stuffthingmaps_trainval2017/{split}/<id>.png`` and ``labels.txt``.

Maps are 8-bit single-channel PNGs the size of the displayed COCO image: value = labels.txt id − 1
(things 0–90 = COCO category id − 1, stuff 91–181), 255 unlabeled. They are the renderer's label
maps, so they agree pixel for pixel with the instance masks.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.samples.categories import cocostuff_labels
from pipeline.samples.coco import SPLITS, CocoImage
from pipeline.samples.quirks import png_bytes, write_bytes

MAPS_DIRNAME = "stuffthingmaps_trainval2017"


def labels_txt() -> str:
    """The official labels.txt text: one "id: name" line per class, 0 = unlabeled."""
    return "".join(f"{i}: {name}\n" for i, name in sorted(cocostuff_labels().items()))


def write(root: Path, images: list[CocoImage]) -> dict[str, dict[str, int]]:
    """Write labels.txt and one label map per COCO image under `root` (= out_dir/cocostuff)."""
    from PIL import Image

    write_bytes(root / "labels.txt", labels_txt().encode("utf-8"))
    counts = {split: 0 for split in SPLITS}
    for img in images:
        label_map = Image.fromarray(img.rendered.labels, "L")
        write_bytes(root / MAPS_DIRNAME / img.split / f"{img.image_id:012d}.png", png_bytes(label_map))
        counts[img.split] += 1
    return {"cocostuff": counts}
