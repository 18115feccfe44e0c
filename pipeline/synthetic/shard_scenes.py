"""Scenes from converted referring shards (RefCOCO/+/g, gRefCOCO `referring_mask` datasets).

The converters store, per ref, the original image bytes (``jpg``/``png``), the target mask
(``mask.png``, 8-bit L, 255 = target) and json with ``image_id``, ``ann_ids``, ``category_id``
(RefCOCO family) or ``category_ids`` (gRefCOCO) and ``split``. Grouped by image with one object per
distinct annotation, they are written out once as a COCO instances file (RLE masks, the real COCO
category table) plus an image folder, so the scene analysis, selection and every later stage read
them exactly as they read COCO input (the shard stages reload masks and pixels by path in workers).

Skipped, with a count each: no-target refs (empty mask), multi-target gRefCOCO refs (one union mask
cannot be split into its annotations; their members usually have single-target refs of their own),
samples of other kinds and other splits. Refs repeating an annotation keep the first mask seen.
A scene holds only the referred annotations: an unreferred object of the same category is invisible
to left/right and counting picks (RefCOCO refers to most same-category instances; COCO input has all).
Shards carry no mirror regions: pass a scenes.json (`BuildInputs.scenes`) or reflections count as objects.

The input shards may be local or on a bucket (``s3://...``, read through `pipeline.shards`). The COCO files
are always written to a local directory: pycocotools, PIL and the shard stages open them by path. When the
build's output is on a bucket, that directory is a local cache (`materialise_remote_scenes`), uploaded to
``<output>/input_scenes/`` so that a worker on another machine fetches it once (`ensure_local_scenes`)
instead of reading every input shard again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.locking import check_lease
from pipeline.shards import IMAGE_EXTENSIONS, INDEX_NAME, WIDS_KIND, decode_mask, find_manifests, image_member, iter_samples, load_manifest
from pipeline.storage import as_path, is_remote
from pipeline.synthetic.scene import CocoSplit
from pipeline.vocabulary import COCO_CATEGORIES
from pipeline.writer import atomic_write_text

log = logging.getLogger(__name__)

KIND = "referring_mask"


def is_shard_input(path: str | Path) -> bool:
    """True for a ``shardindex.json``, a dataset directory holding one, or a directory with some below it
    (and no COCO ``annotations/instances_*.json`` layout, which keeps its meaning). A bucket URL is shard
    input when a ``shardindex.json`` is at or below it."""
    path = as_path(path)
    if is_remote(path):
        return path.name == INDEX_NAME or bool(find_manifests(path))
    if path.is_file():
        if path.name == INDEX_NAME:
            return True
        if path.suffix != ".json":
            return False
        try:
            with path.open("rb") as fh:
                head = fh.read(200)  # a wids index starts with its __kind__; no need to parse a huge COCO file
        except OSError:
            return False
        return WIDS_KIND.encode() in head
    if not path.is_dir():
        return False
    if (path / INDEX_NAME).is_file():
        return True
    for ann_dir in (path / "coco" / "annotations", path / "annotations"):
        if any(ann_dir.glob("instances_*.json")):
            return False
    return bool(find_manifests(path))


def _referring_manifests(path) -> list[Path]:
    manifests = [path] if path.is_file() else find_manifests(path)
    out = []
    for m in manifests:
        kinds = load_manifest(m).get("counts", {}).get("kinds", {})
        if kinds and KIND not in kinds:
            log.info("shard input: %s holds %s, not %s samples; skipped", m, sorted(kinds), KIND)
            continue
        out.append(m)
    if not out:
        raise FileNotFoundError(f"{path}: no {INDEX_NAME} of {KIND} samples below it; convert refcoco/refcoco+/"
                                "refcocog/grefcoco first (`smartedit convert refcoco --out DIR`) and pass DIR")
    return out


def _read_samples(manifest: Path) -> Iterable[dict[str, Any]]:
    """Raw samples of one dataset, in index order (members stay bytes)."""
    return iter_samples(manifest)


def _category_id(meta: dict[str, Any], where: str) -> int:
    if meta.get("category_id") is not None:
        return int(meta["category_id"])
    ids = meta.get("category_ids") or []
    if len(ids) != 1:
        raise ValueError(f"{where}: json field 'category_id' missing and 'category_ids' is {ids!r}; "
                         "reconvert with the current refcoco/grefcoco readers")
    return int(ids[0])


def materialise_shard_scenes(input_path: str | Path, out_dir: str | Path,
                             splits: Iterable[str] | None = None) -> tuple[list[CocoSplit], dict[str, Any]]:
    """Write ``out_dir/annotations/instances_<split>.json`` + ``out_dir/<split>/<image>`` from converted shards.

    input_path: a ``shardindex.json``, a dataset directory, or a directory of them (non-referring
    datasets below it are ignored). splits: keep only samples of these json splits (empty: all).
    An image referred from several splits is one scene, filed under the splits joined with "+".
    Returns the COCO splits for `CocoIndex` and the counts (samples read, objects, skipped by reason).
    """
    from pycocotools import mask as mask_utils

    path, out_dir = as_path(input_path), Path(out_dir)
    wanted = set(splits or ())
    images: dict[int, dict[str, Any]] = {}  # image_id → file name, bytes, size, splits
    objects: dict[int, dict[str, Any]] = {}  # ann_id → image_id, category_id, mask (H, W) bool
    counts: dict[str, Any] = {"samples": 0, "objects": 0, "images": 0, "duplicate_refs": 0, "skipped": {}}

    def skip(reason: str) -> None:
        counts["skipped"][reason] = counts["skipped"].get(reason, 0) + 1

    manifests = _referring_manifests(path)
    for manifest in manifests:
        for sample in _read_samples(manifest):
            counts["samples"] += 1
            where = f"{sample.get('__url__', manifest)}#{sample['__key__']}"
            meta = json.loads(sample["json"])
            if meta.get("kind") != KIND:
                skip("other_kind")
                continue
            if wanted and meta.get("split") not in wanted:
                skip("other_split")
                continue
            if meta.get("no_target"):
                skip("no_target")
                continue
            ann_ids = [int(a) for a in meta.get("ann_ids") or []]
            if len(ann_ids) != 1:
                skip("multi_target" if ann_ids else "no_annotation")
                continue
            for field_name in ("image_id", "split"):
                if field_name not in meta:
                    raise ValueError(f"{where}: json field {field_name!r} missing; reconvert with the current readers")
            ann_id, image_id = ann_ids[0], int(meta["image_id"])
            if "mask.png" not in sample:
                raise ValueError(f"{where}: member mask.png missing; is this a {KIND} dataset?")
            mask = decode_mask(sample["mask.png"], f"{where}: mask.png") > 127
            image = images.get(image_id)
            if image is None:
                ext = image_member(sample)
                if ext is None:
                    raise ValueError(f"{where}: no image member (one of {list(IMAGE_EXTENSIONS)}) beside mask.png")
                name = meta.get("image_file") or f"{image_id:012d}.{ext}"
                image = images[image_id] = {"file_name": Path(name).name, "data": sample[ext],
                                            "height": mask.shape[0], "width": mask.shape[1], "splits": set()}
            elif mask.shape != (image["height"], image["width"]):
                raise ValueError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, other refs of image {image_id} "
                                 f"are {image['width']}x{image['height']}")
            image["splits"].add(str(meta["split"]))
            if ann_id in objects:
                counts["duplicate_refs"] += 1
                if not np.array_equal(objects[ann_id]["mask"], mask):
                    log.warning("%s: annotation %d's mask differs from an earlier ref's; keeping the first", where, ann_id)
                continue
            objects[ann_id] = {"image_id": image_id, "category_id": _category_id(meta, where), "mask": mask}

    by_split: dict[str, dict[str, list]] = {}
    for image_id, image in sorted(images.items()):
        label = "+".join(sorted(image["splits"]))
        doc = by_split.setdefault(label, {"images": [], "annotations": []})
        doc["images"].append({"id": image_id, "file_name": image["file_name"],
                              "width": image["width"], "height": image["height"]})
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image["file_name"]).write_bytes(image["data"])
    for ann_id, obj in sorted(objects.items()):
        label = "+".join(sorted(images[obj["image_id"]]["splits"]))
        rle = mask_utils.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
        by_split[label]["annotations"].append({
            "id": ann_id, "image_id": obj["image_id"], "category_id": obj["category_id"],
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": int(obj["mask"].sum()),
            "iscrowd": 0,  # the converted json does not carry it; refs point at single instances
        })
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES]
    out = []
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for label, doc in sorted(by_split.items()):
        ann_path = out_dir / "annotations" / f"instances_{label}.json"
        atomic_write_text(ann_path, json.dumps({**doc, "categories": categories}))
        out.append(CocoSplit(ann_path, out_dir / label, label))
    counts.update(objects=len(objects), images=len(images), datasets=[str(m) for m in manifests])
    if not out:
        raise ValueError(f"{path}: no usable refs (read {counts['samples']}, skipped {counts['skipped']})"
                         + (f"; splits {sorted(wanted)} wanted" if wanted else ""))
    log.info("shard input: %d objects on %d images from %d refs (%d repeats; skipped %s)", len(objects),
             len(images), counts["samples"], counts["duplicate_refs"], counts["skipped"])
    return out, counts


SCENES_CACHE_ENV = "SMARTEDIT_SCENES_CACHE"


def scenes_cache_root() -> Path:
    """Where scenes of builds with a bucket output are materialised: ``$SMARTEDIT_SCENES_CACHE`` or the system
    temporary directory. The plan records the paths, so every worker must resolve the same root."""
    return Path(os.environ.get(SCENES_CACHE_ENV) or Path(tempfile.gettempdir()) / "smartedit-input-scenes")


def _swap_in(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final`` (a rename: readers see all of it or none); when another
    process got there first, its copy (the same files) is kept."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def materialise_remote_scenes(input_path: str | Path, remote_dir, splits: Iterable[str] | None = None
                              ) -> tuple[list[CocoSplit], dict[str, Any]]:
    """`materialise_shard_scenes` for a build whose output is on a bucket: the files go to a fresh local cache
    directory (a new name per plan, so a stale copy is never taken for this one), which is then uploaded to
    ``remote_dir`` for `ensure_local_scenes` on other machines."""
    tag = hashlib.sha256(str(remote_dir).encode()).hexdigest()[:12]
    final = scenes_cache_root() / f"{tag}-{secrets.token_hex(4)}"
    tmp = final.with_name(final.name + ".tmp")
    splits_out, counts = materialise_shard_scenes(input_path, tmp, splits)
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    check_lease(remote_dir)  # a build that lost its bucket lock lease uploads nothing more
    if remote_dir.exists():  # an earlier planning attempt's upload (plan.json was not written: it died)
        remote_dir.fs.rm(remote_dir.path, recursive=True)
    remote_dir.fs.put([str(p) for p in files], [f"{remote_dir.path}/{p.relative_to(tmp).as_posix()}" for p in files])
    _swap_in(tmp, final)
    moved = [CocoSplit(final / s.annotations.relative_to(tmp), final / s.images.relative_to(tmp), s.split)
             for s in splits_out]
    return moved, counts


def ensure_local_scenes(annotations: Iterable[str], remote_dir) -> None:
    """Download ``remote_dir`` (uploaded by `materialise_remote_scenes`) to the local directory the plan's
    ``annotations`` paths lie in, unless it is there already (on the planning machine, or fetched before)."""
    paths = [Path(a) for a in annotations]
    if not paths or all(p.is_file() for p in paths):
        return
    final = paths[0].parents[1]  # <root>/annotations/instances_<split>.json
    tmp = final.with_name(f"{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    base = remote_dir.path.rstrip("/") + "/"
    keys = remote_dir.fs.find(remote_dir.path)
    if not keys:
        raise FileNotFoundError(f"{remote_dir}: the materialised input scenes are missing; delete "
                                f"{remote_dir.parent / 'plan.json'} and rerun to plan again")
    remote_dir.fs.get(keys, [str(tmp / k[len(base):]) for k in keys])
    _swap_in(tmp, final)
    log.info("shard input: fetched %d files of %s into %s", len(keys), remote_dir, final)
