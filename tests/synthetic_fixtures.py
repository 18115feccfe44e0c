"""Small hand-made scenes in the sample-data layout for the synthetic builder's tests.

coco/annotations/instances_val2017.json + coco/val2017/*.png + scenes.json (mirrors ground truth).
Each scene is built for one scenario or one drop reason; objects are polygons filled with a palette
colour over a textured background (so removals and recolours change pixels measurably).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

W, H = 96, 72
PALETTE = {"red": (210, 35, 40), "green": (40, 160, 60), "blue": (35, 75, 205), "yellow": (240, 215, 40),
           "white": (245, 245, 240), "black": (25, 25, 25), "brown": (120, 75, 35), "pink": (240, 145, 185)}
CATS = {"person": 1, "cat": 17, "dog": 18, "clock": 85, "cup": 47}


def _ellipse(cx, cy, w, h, n=16):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [float(v) for p in zip(cx + w / 2 * np.cos(t), cy + h / 2 * np.sin(t)) for v in p]


# (file stem, [(category, colour, cx, cy, w, h)], mirrors [(x, y, w, h)])
SCENES = [
    ("lr_dogs", [("dog", "red", 20, 40, 22, 18), ("dog", "blue", 70, 38, 14, 12)], []),
    ("three_cats", [("cat", "red", 14, 36, 14, 14), ("cat", "green", 46, 36, 14, 14), ("cat", "blue", 78, 36, 14, 14)], []),
    ("mirror_clock", [("clock", "white", 20, 45, 16, 16), ("cup", "yellow", 70, 35, 12, 12)], [(54, 10, 36, 50)]),
    ("single_clock", [("clock", "black", 48, 36, 24, 24)], []),
    ("stacked_dogs", [("dog", "red", 40, 18, 16, 12), ("dog", "red", 41, 52, 16, 12)], []),  # same x, same colour, same size
    ("tiny_cup", [("cup", "pink", 50, 40, 5, 5)], []),
]


# Scenes that each trip one planning drop reason (see test_synthetic_build.py).
DROP_SCENES = [
    ("stacked_dogs", [("dog", "red", 40, 18, 16, 12), ("dog", "red", 41, 52, 16, 12)], []),
    ("tiny_cup", [("cup", "pink", 50, 40, 5, 5)], []),
    ("huge_clock", [("clock", "white", 48, 36, W, H)], []),
    ("empty_mirror", [("clock", "black", 20, 40, 14, 14)], [(54, 10, 36, 50)]),
    ("two_reflections", [("cup", "red", 66, 25, 10, 10), ("cup", "blue", 78, 45, 10, 10)], [(54, 10, 36, 50)]),
    ("no_objects", [], []),
    ("missing_image", [("clock", "black", 48, 36, 24, 24)], []),
    ("wrong_size", [("clock", "black", 48, 36, 24, 24)], []),
    ("eval_copy", [("cat", "red", 30, 36, 20, 20)], []),
]


def make_drop_scenes(root: Path) -> Path:
    """DROP_SCENES, then break files: one image deleted, one resized; `eval_copy` also copied into a
    Reason-Edit-style evaluation folder ``root/eval/6-Reasoning/001.png``."""
    make_scenes(root, DROP_SCENES)
    images = root / "coco" / "val2017"
    (images / "missing_image.png").unlink()
    Image.open(images / "wrong_size.png").resize((W // 2, H // 2)).save(images / "wrong_size.png")
    (root / "eval" / "6-Reasoning").mkdir(parents=True)
    Image.open(images / "eval_copy.png").save(root / "eval" / "6-Reasoning" / "001.png")
    return root


def _background(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([90 + xx, 120 + yy, 150 + (xx + yy) // 3], -1).astype(np.float64)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def make_scenes(root: Path, scenes=SCENES) -> Path:
    """Write the layout under ``root``; returns root."""
    img_dir = root / "coco" / "val2017"
    ann_dir = root / "coco" / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, anns, gt = [], [], {}
    ann_id = 1
    for image_id, (stem, objects, mirrors) in enumerate(scenes, start=1):
        canvas = Image.fromarray(_background(image_id))
        draw = ImageDraw.Draw(canvas)
        gt_objects = []
        for (x, y, w, h) in mirrors:
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(95, 60, 30))
        for category, colour, cx, cy, w, h in objects:
            # in the mirror scene, the cup stands inside the mirror box: a "reflection"
            poly = _ellipse(cx, cy, w, h) if w < W else [0.0, 0.0, W, 0.0, W, H, 0.0, H]  # full-frame: a rectangle
            draw.polygon(poly, fill=PALETTE[colour])
            xs, ys = poly[0::2], poly[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            anns.append({"id": ann_id, "image_id": image_id, "category_id": CATS[category], "segmentation": [poly],
                         "bbox": bbox, "area": float(w * h * np.pi / 4), "iscrowd": 0})
            gt_objects.append({"ann_id": ann_id, "category": category, "colour": colour, "bbox": bbox,
                               "centroid": [cx, cy]})
            ann_id += 1
        name = f"{stem}.png"
        canvas.save(img_dir / name)
        images.append({"id": image_id, "file_name": name, "width": W, "height": H})
        gt[name] = {"file_name": name, "split": "val2017", "width": W, "height": H, "objects": gt_objects,
                    "mirrors": [{"bbox": list(m)} for m in mirrors]}
    categories = [{"id": i, "name": n, "supercategory": "x"} for n, i in sorted(CATS.items(), key=lambda kv: kv[1])]
    (ann_dir / "instances_val2017.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                "categories": categories}))
    (root / "scenes.json").write_text(json.dumps(gt))
    return root


def make_eval_set(root: Path) -> Path:
    """A Reason-Edit-style evaluation folder (``1-Left-Right/001.png``) of an image unlike the scenes."""
    folder = root / "1-Left-Right"
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx ^ yy) * 4) % 256], -1).astype(np.uint8)).save(folder / "001.png")
    return root
