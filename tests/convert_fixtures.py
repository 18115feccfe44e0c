"""Tiny source trees in the official layouts, with crafted bad records, for the converter tests.

`build_sources(tmp)` writes every source under ``tmp`` and returns a `FixtureSet` describing what
was written: roots, per split the number of records and which record must be rejected with which
reason. Images are a few dozen pixels so the whole set builds in well under a second.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def png(arr: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class FixtureSet:
    root: Path
    roots: dict[str, Path] = field(default_factory=dict)
    options: dict[str, dict] = field(default_factory=dict)
    # source → split → number of records in the source files
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # source → split → {reason: n} of the crafted bad records
    rejects: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


COCO_SIZES = {1: (40, 30), 2: (48, 36), 3: (32, 32), 4: (36, 28), 5: (44, 30)}


def _coco(root: Path) -> Path:
    d = root / "coco" / "train2017"
    d.mkdir(parents=True)
    for image_id, (w, h) in COCO_SIZES.items():
        (d / f"{image_id:012d}.jpg").write_bytes(jpeg(w, h, image_id))
    return d


def _cocostuff(root: Path, fx: FixtureSet) -> None:
    images = root / "coco"
    maps = root / "cocostuff" / "stuffthingmaps_trainval2017"
    for split in ("train2017", "val2017"):
        (maps / split).mkdir(parents=True)
        (images / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    values = np.array([0, 1, 95, 100, 170, 255], np.uint8)  # 95 building-other and 170 wall-brick have dashes
    for i in range(1, 5):
        w, h = 24 + 4 * i, 20 + 2 * i
        (images / "train2017" / f"{100 + i:012d}.jpg").write_bytes(jpeg(w, h, 100 + i))
        (maps / "train2017" / f"{100 + i:012d}.png").write_bytes(png(rng.choice(values, (h, w)).astype(np.uint8)))
    # bad: map without image, map of the wrong size, corrupt png, truncated jpeg
    (maps / "train2017" / f"{201:012d}.png").write_bytes(png(np.zeros((10, 10), np.uint8)))
    (images / "train2017" / f"{202:012d}.jpg").write_bytes(jpeg(30, 20, 202))
    (maps / "train2017" / f"{202:012d}.png").write_bytes(png(np.zeros((21, 30), np.uint8)))
    (images / "train2017" / f"{203:012d}.jpg").write_bytes(jpeg(30, 20, 203))
    broken = bytearray(png(rng.choice(values, (20, 30)).astype(np.uint8)))
    idat = broken.find(b"IDAT")
    broken[idat + 8] ^= 0xFF  # flip a byte of the compressed data: the chunk CRC no longer matches
    (maps / "train2017" / f"{203:012d}.png").write_bytes(bytes(broken))
    (images / "train2017" / f"{204:012d}.jpg").write_bytes(jpeg(30, 20, 204)[:-300])
    (maps / "train2017" / f"{204:012d}.png").write_bytes(png(np.zeros((20, 30), np.uint8)))
    (images / "val2017" / f"{301:012d}.jpg").write_bytes(jpeg(20, 16, 301))
    (maps / "val2017" / f"{301:012d}.png").write_bytes(png(np.full((16, 20), 3, np.uint8)))
    fx.roots["cocostuff"] = root / "cocostuff"
    fx.options["cocostuff"] = {"images": str(images)}
    fx.counts["cocostuff"] = {"train2017": 8, "val2017": 1}
    fx.rejects["cocostuff"] = {"train2017": {"image_missing": 1, "size_mismatch": 1, "image_corrupt": 1, "image_truncated": 1}}


def _poly(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _instances() -> dict:
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": w, "height": h} for i, (w, h) in COCO_SIZES.items()]
    images.append({"id": 99, "file_name": "COCO_train2014_000000000099.jpg", "width": 10, "height": 10})  # no file
    h2, w2 = COCO_SIZES[2][1], COCO_SIZES[2][0]
    rle_mask = np.zeros((h2, w2), np.uint8, order="F")
    rle_mask[5:20, 10:30] = 1
    from pycocotools import mask as mask_utils

    compressed = mask_utils.encode(np.asfortranarray(rle_mask))
    compressed["counts"] = compressed["counts"].decode("ascii")
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": [[2.5, 3.0, 20.2, 4.1, 15.7, 25.3], _poly(25, 5, 38.6, 12.4)]},  # two parts
        {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [_poly(1, 1, 10, 10)]},
        {"id": 21, "image_id": 2, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [h2, w2], "counts": [50, 30, 100, 40, h2 * w2 - 220]}},  # uncompressed RLE
        {"id": 22, "image_id": 2, "category_id": 2, "iscrowd": 1, "segmentation": compressed},
        {"id": 31, "image_id": 3, "category_id": 5, "iscrowd": 0, "segmentation": [[3.2, 3.3, 28.9, 6.1, 12.4, 30.7, 2.0, 20.0]]},
        {"id": 41, "image_id": 4, "category_id": 1, "iscrowd": 0, "segmentation": [_poly(40, 40, 90, 80)]},  # outside
        {"id": 51, "image_id": 5, "category_id": 7, "iscrowd": 0, "segmentation": [_poly(4, 4, 30, 20)]},
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"cat{c}"} for c in range(1, 8)]}


def _sent(i: int, text: str) -> dict:
    return {"tokens": text.split(), "raw": text.capitalize(), "sent": text, "sent_id": i}


def _refs() -> list[dict]:
    return [
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "category_id": 1, "split": "train", "file_name": "COCO_train2014_000000000001_11.jpg",
         "sent_ids": [1, 2], "sentences": [_sent(1, "the left thing"), _sent(2, "red blob ünïcode")]},
        {"ref_id": 2, "ann_id": 21, "image_id": 2, "category_id": 1, "split": "train", "file_name": "x_21.jpg",
         "sent_ids": [3], "sentences": [_sent(3, "crowd of people")]},
        {"ref_id": 3, "ann_id": 22, "image_id": 2, "category_id": 2, "split": "train", "file_name": "x_22.jpg",
         "sent_ids": [4], "sentences": [_sent(4, "compressed rle region")]},
        {"ref_id": 4, "ann_id": 31, "image_id": 3, "category_id": 5, "split": "val", "file_name": "x_31.jpg",
         "sent_ids": [5], "sentences": [_sent(5, "the triangle")]},
        # bad: polygon outside the image, unknown image, empty text
        {"ref_id": 5, "ann_id": 41, "image_id": 4, "category_id": 1, "split": "train", "file_name": "x_41.jpg",
         "sent_ids": [6], "sentences": [_sent(6, "off the edge")]},
        {"ref_id": 6, "ann_id": 51, "image_id": 777, "category_id": 7, "split": "train", "file_name": "x_51.jpg",
         "sent_ids": [7], "sentences": [_sent(7, "nowhere")]},
        {"ref_id": 7, "ann_id": 51, "image_id": 5, "category_id": 7, "split": "train", "file_name": "x_51.jpg",
         "sent_ids": [8], "sentences": [_sent(8, "  ")]},
        {"ref_id": 8, "ann_id": 12, "image_id": 1, "category_id": 3, "split": "testA", "file_name": "x_12.jpg",
         "sent_ids": [9], "sentences": [_sent(9, "small square")]},
    ]


def _refer(root: Path, fx: FixtureSet) -> None:
    refer = root / "refer"
    instances = _instances()
    for name, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        d = refer / name
        d.mkdir(parents=True)
        (d / "instances.json").write_text(json.dumps(instances))
        refs = _refs()
        if name == "refcocog":
            for r in refs:
                r["split"] = {"testA": "test"}.get(r["split"], r["split"])
        (d / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
        fx.roots[name] = refer
        fx.options[name] = {"images": str(root / "coco" / "train2017")}
        splits = {"train": 6, "val": 1, "testA" if name != "refcocog" else "test": 1}
        if name != "refcocog":
            splits["testB"] = 0
        fx.counts[name] = splits
        fx.rejects[name] = {"train": {"polygon_out_of_bounds": 1, "unknown_image": 1, "empty_text": 1}}
    d = refer / "grefcoco"
    d.mkdir()
    (d / "instances.json").write_text(json.dumps(instances))
    grefs = [
        {"ref_id": 1, "ann_id": [11, 12], "image_id": 1, "category_id": [1, 3], "split": "train", "no_target": False,
         "sent_ids": [1], "sentences": [_sent(1, "both things")]},
        {"ref_id": 2, "ann_id": [-1], "image_id": 3, "category_id": [-1], "split": "train", "no_target": True,
         "sent_ids": [2], "sentences": [_sent(2, "the purple giraffe")]},
        {"ref_id": 3, "ann_id": [21, 22], "image_id": 2, "category_id": [1, 2], "split": "val", "no_target": False,
         "sent_ids": [3], "sentences": [_sent(3, "crowd and region")]},
        {"ref_id": 4, "ann_id": [51], "image_id": 99, "category_id": [7], "split": "train", "no_target": False,
         "sent_ids": [4], "sentences": [_sent(4, "image file missing")]},
    ]
    (d / "grefs(unc).json").write_text(json.dumps(grefs))
    fx.roots["grefcoco"] = refer
    fx.options["grefcoco"] = {"images": str(root / "coco" / "train2017")}
    fx.counts["grefcoco"] = {"train": 3, "val": 1, "testA": 0, "testB": 0}
    fx.rejects["grefcoco"] = {"train": {"image_missing": 1}}


def reasonseg_shapes(w: int, h: int) -> list[dict]:
    return [
        {"label": "target", "shape_type": "polygon", "points": [[1.3, 1.7], [w - 2.2, 2.4], [w - 4.6, h - 2.1], [2.1, h - 3.3]]},
        {"label": "ignore", "shape_type": "polygon", "points": [[5.4, 5.2], [12.7, 6.1], [9.3, 13.8]]},  # small: wins
        {"label": "flag", "shape_type": "polygon", "points": [[0.5, 0.5], [3.5, 0.5], [3.5, 3.5]]},
        {"label": "target", "shape_type": "polygon", "points": [[7.1, 7.3], [9.6, 7.2], [8.2, 10.9]]},  # inside ignore
    ]


def _reasonseg(root: Path, fx: FixtureSet) -> None:
    base = root / "ReasonSeg"
    names = {"train": ["a.b c", "plain", "with.many.dots"], "val": ["v 1"], "test": ["t1", "t2"]}
    for split, stems in names.items():
        (base / split).mkdir(parents=True)
        for j, stem in enumerate(stems):
            w, h = 30 + j * 2, 24 + j
            (base / split / f"{stem}.jpg").write_bytes(jpeg(w, h, hash(stem) % 1000))
            ann = {"text": [f"what would you sit on in {stem}?", "segment the seat"], "is_sentence": j % 2 == 0,
                   "shapes": reasonseg_shapes(w, h)}
            (base / split / f"{stem}.json").write_text(json.dumps(ann))
    # bad: empty text, missing json
    (base / "train" / "empty.jpg").write_bytes(jpeg(20, 20, 5))
    (base / "train" / "empty.json").write_text(json.dumps({"text": [], "is_sentence": False, "shapes": []}))
    (base / "train" / "nojson.jpg").write_bytes(jpeg(20, 20, 6))
    (base / "explanatory").mkdir()
    (base / "explanatory" / "train.json").write_text(json.dumps([{"image": "a.b c.jpg", "query": "q", "outputs": "Because it is a chair."}]))
    fx.roots["reasonseg"] = base
    fx.counts["reasonseg"] = {"train": 5, "val": 1, "test": 2}
    fx.rejects["reasonseg"] = {"train": {"empty_text": 1, "annotation_missing": 1}}


def _llava(root: Path, fx: FixtureSet) -> None:
    d = root / "llava"
    d.mkdir()
    (root / "secret.jpg").write_bytes(jpeg(8, 8, 1))
    conv = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]  # noqa: E731
    records = [
        {"id": "000000000001", "image": "000000000001.jpg", "conversations": conv("<image>\nWhat is this?", "A blob.")},
        {"id": "000000000001", "image": "000000000001.jpg", "conversations": conv("Describe it.\n<image>", "Colourful noise.")
         + [{"from": "human", "value": "And the size?"}, {"from": "gpt", "value": "Small."}]},
        {"id": "000000000002", "image": "000000000002.jpg", "conversations": conv("How many?", "Two.")},
        {"id": "x", "image": "000000000003.jpg", "conversations": conv("<image>\n", "empty question")},  # empty_text
        {"id": "y", "image": "../secret.jpg", "conversations": conv("<image>\nEscape?", "No.")},  # path_escape
        {"id": "z", "image": "000000000404.jpg", "conversations": conv("<image>\nMissing?", "Yes.")},  # image_missing
    ]
    (d / "llava_instruct_150k.json").write_text(json.dumps(records))
    fx.roots["llava-instruct"] = d
    fx.options["llava-instruct"] = {"images": str(root / "coco" / "train2017")}
    fx.counts["llava-instruct"] = {"train": len(records)}
    fx.rejects["llava-instruct"] = {"train": {"empty_text": 1, "path_escape": 1, "image_missing": 1}}


def _ip2p(root: Path, fx: FixtureSet) -> None:
    folder = root / "instructpix2pix" / "folder"
    seeds = [["0000000", ["111", "222"]], ["0000001", ["333"]], ["0000002", ["444"]]]
    prompts = {"0000000": {"input": "a cat", "edit": "make it a dog", "output": "a dog"},
               "0000001": {"input": "a house", "edit": "add snow", "output": "a snowy house"},
               "0000002": {"input": "a car", "edit": "", "output": "a car"}}  # empty instruction
    for d, ss in seeds:
        (folder / d).mkdir(parents=True)
        (folder / d / "prompt.json").write_text(json.dumps(prompts[d]))
        for s in ss:
            (folder / d / f"{s}_0.jpg").write_bytes(jpeg(32, 32, int(s)))
            (folder / d / f"{s}_1.jpg").write_bytes(jpeg(32, 32, int(s) + 1))
    (folder / "0000001" / "333_1.jpg").unlink()  # missing edited image
    (folder / "seeds.json").write_text(json.dumps(seeds))
    fx.roots["instructpix2pix"] = folder
    fx.counts["instructpix2pix"] = {"train": 4}
    fx.rejects["instructpix2pix"] = {"train": {"image_missing": 1, "empty_text": 1}}

    import pyarrow as pa
    import pyarrow.parquet as pq

    pdir = root / "instructpix2pix" / "parquet" / "data"
    pdir.mkdir(parents=True)
    for f in range(2):
        rows = {"original_prompt": [], "original_image": [], "edit_prompt": [], "edited_prompt": [], "edited_image": []}
        for r in range(3):
            k = f * 3 + r
            rows["original_prompt"].append(f"photo {k}")
            rows["original_image"].append({"bytes": jpeg(24, 24, 500 + k), "path": f"{k}_0.jpg"})
            rows["edit_prompt"].append(f"turn it blue {k}")
            rows["edited_prompt"].append(f"blue photo {k}")
            rows["edited_image"].append({"bytes": jpeg(24, 24, 600 + k), "path": f"{k}_1.jpg"})
        pq.write_table(pa.table(rows), pdir / f"train-{f:05d}-of-00002.parquet", row_group_size=2)
    fx.roots["instructpix2pix-parquet"] = pdir.parent
    fx.counts["instructpix2pix-parquet"] = {"train": 6}


def _magicbrush(root: Path, fx: FixtureSet) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = root / "magicbrush"
    (base / "data").mkdir(parents=True)
    for split, n in (("train", 4), ("dev", 2)):
        rows = {"img_id": [], "turn_index": [], "source_img": [], "mask_img": [], "instruction": [], "target_img": []}
        for k in range(n):
            w, h = 28, 24
            mask = np.zeros((h, w, 3), np.uint8)
            mask[4:12, 6:20] = 255
            mask[14:16, 2:4] = 100  # grey: below the threshold, not edit region
            rows["img_id"].append(str(1000 + k))
            rows["turn_index"].append(k % 2 + 1)
            rows["source_img"].append({"bytes": png(np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB"), "path": None})
            rows["mask_img"].append({"bytes": png(mask, "RGB"), "path": None})
            rows["instruction"].append(f"put a hat on it {k}")
            rows["target_img"].append({"bytes": jpeg(w, h, 900 + k), "path": None})
        if split == "train":  # bad: mask of another size
            rows["mask_img"][3] = {"bytes": png(np.zeros((10, 10), np.uint8)), "path": None}
        pq.write_table(pa.table(rows), base / "data" / f"{split}-00000-of-00001.parquet")
    legacy = root / "magicbrush_legacy"
    (legacy / "data").mkdir(parents=True)
    rows = {"img_id": ["1", "2"], "turn_index": [1, 1], "input_img": [{"bytes": jpeg(20, 20, 1), "path": None}] * 2,
            "instruction": ["make it red", "make it green"], "output_img": [{"bytes": jpeg(20, 20, 2), "path": None}] * 2}
    pq.write_table(pa.table(rows), legacy / "data" / "train-00000-of-00001.parquet")
    fx.roots["magicbrush"] = base
    fx.roots["magicbrush-legacy"] = legacy
    fx.counts["magicbrush"] = {"train": 4, "dev": 2}
    fx.rejects["magicbrush"] = {"train": {"size_mismatch": 1}}


def build_sources(tmp: Path) -> FixtureSet:
    fx = FixtureSet(tmp)
    _coco(tmp)
    _cocostuff(tmp, fx)
    _refer(tmp, fx)
    _reasonseg(tmp, fx)
    _llava(tmp, fx)
    _ip2p(tmp, fx)
    _magicbrush(tmp, fx)
    return fx
