"""RefCOCO, RefCOCO+ and RefCOCOg in the refer toolkit's layout.

``refer/<dataset>/refs(<splitBy>).p`` is a list of ref dicts pickled with protocol 2 (what the
Python-2-era originals are), holding only builtin types; ``refer/<dataset>/instances.json`` is a
COCO instances document over the referred images. A ref's ``file_name`` is the original
``COCO_train2014_<id>_<ann>.jpg`` form, which is deliberately not a file anywhere: images are found
through instances.json, whose ``file_name`` is the ``coco/train2017`` JPEG.

Splits are by image, as in the originals: unc → train/val/testA/testB (testA holds only people,
testB only other objects), umd → train/val/test, google → train/val.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import expressions as ex
from pipeline.samples.coco import CocoImage, instances_json
from pipeline.samples.quirks import write_bytes, write_json

REFS_PER_DATASET = 40
PICKLE_PROTOCOL = 2  # the originals were written by Python 2


def _has_person(img: CocoImage) -> bool:
    return any(o.category == "person" and not o.crowd and not o.in_mirror for o in img.scene.objects)


def image_splits(images: list[CocoImage], split_by: str, rng: np.random.Generator) -> dict[int, str]:
    """image_id → split for one splitBy scheme."""
    order = [images[int(i)] for i in rng.permutation(len(images))]
    split: dict[int, str] = {}
    if split_by == "unc":
        people = [i for i in order if _has_person(i)]
        for img in people[:2]:
            split[img.image_id] = "testA"
        for img in [i for i in order if not _has_person(i)][:3]:
            split[img.image_id] = "testB"
        rest = [i for i in order if i.image_id not in split]
        for k, img in enumerate(rest):
            split[img.image_id] = "val" if k < 4 else "train"
    elif split_by == "umd":
        for k, img in enumerate(order):
            split[img.image_id] = "val" if k < 3 else "test" if k < 7 else "train"
    elif split_by == "google":
        for k, img in enumerate(order):
            split[img.image_id] = "val" if k < 5 else "train"
    else:
        raise ValueError(f"splitBy {split_by!r} unknown; expected unc, umd or google")
    return split


def _allowed(split: str, obj) -> bool:
    if split == "testA":
        return obj.category == "person"
    if split == "testB":
        return obj.category != "person"
    return True


def build_refs(images: list[CocoImage], style: ex.Style, splits: dict[int, str], rng: np.random.Generator,
               n_refs: int = REFS_PER_DATASET) -> list[dict[str, Any]]:
    """Pick up to n_refs referable objects and write 1–3 sentences each (refer ref dicts, builtin types only)."""
    candidates = []
    for img in images:
        for idx, obj in enumerate(img.scene.objects):
            if obj.crowd or not _allowed(splits[img.image_id], obj):
                continue
            sentences = ex.expressions(ex.context(img.rendered, idx), style)
            if sentences:
                candidates.append((img, idx, sentences))
    keep = sorted(int(i) for i in rng.choice(len(candidates), size=min(n_refs, len(candidates)), replace=False))
    refs, sent_id = [], 0
    for ref_id, k in enumerate(keep):
        img, idx, texts = candidates[k]
        obj = img.scene.objects[idx]
        n = int(rng.integers(1, min(3, len(texts)) + 1))
        chosen = [texts[int(i)] for i in sorted(rng.choice(len(texts), size=n, replace=False))]
        sentences = []
        for text in chosen:
            raw, sent, tokens = ex.raw_and_sent(text, rng)
            sentences.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": sent})
            sent_id += 1
        refs.append({
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": f"COCO_train2014_{img.image_id:012d}_{int(obj.ann_id)}.jpg",
            "ann_id": int(obj.ann_id), "ref_id": ref_id, "image_id": int(img.image_id),
            "split": splits[img.image_id], "sentences": sentences, "category_id": int(obj.category_id),
        })
    return refs


def _count(refs: list[dict[str, Any]], key: str = "refs") -> dict[str, int]:
    out: dict[str, int] = {}
    for r in refs:
        out[r["split"]] = out.get(r["split"], 0) + (1 if key == "refs" else len(r["sentences"]))
    return dict(sorted(out.items()))


DATASETS: tuple[tuple[str, ex.Style, tuple[str, ...]], ...] = (
    ("refcoco", "unc", ("unc",)),
    ("refcoco+", "plus", ("unc",)),
    ("refcocog", "g", ("umd", "google")),
)


def write(root: Path, images: list[CocoImage], rng: np.random.Generator) -> dict[str, Any]:
    """Write the three refer datasets under `root` (= out_dir/refer); returns ref and sentence counts."""
    train = [i for i in images if i.split == "train2017"]
    counts: dict[str, dict[str, int]] = {}
    sentences: dict[str, dict[str, int]] = {}
    by_id = {i.image_id: i for i in train}
    for dataset, style, split_bys in DATASETS:
        first = image_splits(train, split_bys[0], rng)
        refs = build_refs(train, style, first, rng)
        used = sorted({r["image_id"] for r in refs})
        for split_by in split_bys:
            splits = first if split_by == split_bys[0] else image_splits(train, split_by, rng)
            variant = [dict(r, split=splits[r["image_id"]]) for r in refs]
            write_bytes(root / dataset / f"refs({split_by}).p", pickle.dumps(variant, protocol=PICKLE_PROTOCOL))
            counts[f"{dataset}_{split_by}"] = _count(variant)
            sentences[f"{dataset}_{split_by}"] = _count(variant, "sentences")
        doc = instances_json([by_id[i] for i in used], description=f"{dataset} instances (SmartEdit synthetic sample)")
        write_json(root / dataset / "instances.json", doc)
    return {"counts": counts, "sentences": sentences}
