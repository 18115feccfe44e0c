"""RefCOCO, RefCOCO+ and RefCOCOg (kind ``referring_mask``): one sample per ref, all its sentences.

Layout (the refer toolkit's ``data_root``): ``<root>/<dataset>/refs(<splitBy>).p`` and
``<root>/<dataset>/instances.json``; images are COCO train2014/train2017 JPEGs. A ref's
``file_name`` is not a real file (it has ``_<ann_id>`` appended), so images are found through
``instances.json``: its ``file_name``, else the train2017 name ``<image_id:012d>.jpg`` (the same
pixels under COCO 2017 naming). The mask is the union of the annotation's polygon parts (or its RLE),
decoded with pycocotools and binarised with > 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Reject, Sample
from pipeline.sources.base import BaseReader, SourceError, load_json_file, process_cached
from pipeline.sources.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RejectError, StoredImage, encode_mask_png, read_image
from pipeline.sources.safe_pickle import safe_load


def _image_dir_candidates(root: Path) -> list[Path]:
    return [
        root.parent / "coco" / "train2017",  # the sample-data layout
        root / "images" / "mscoco" / "images" / "train2014",  # the refer toolkit's data/images layout
        root / "images" / "train2014",
        root / "images",
    ]


_INVALID = "__invalid__"  # marks a refs-file entry that can only be a reject


class CocoInstances:
    """``instances.json`` indexed by image id and annotation id."""

    def __init__(self, path: Path):
        what = "the COCO instances.json shipped with the refer datasets"
        doc = load_json_file(path, what)
        self.path = path
        try:
            if not isinstance(doc, dict):
                raise TypeError(f"top level is {type(doc).__name__}, not an object")
            self.images: dict[int, dict[str, Any]] = {int(im["id"]): im for im in doc.get("images", [])}
            self.annotations: dict[int, dict[str, Any]] = {int(a["id"]): a for a in doc.get("annotations", [])}
            self.categories: dict[int, str] = {int(c["id"]): c.get("name", "") for c in doc.get("categories", [])}
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            raise SourceError(f"{path}: not a COCO instances file ({type(err).__name__}: {err}); expected {what}") from None

    @classmethod
    def cached(cls, path: Path) -> "CocoInstances":
        return process_cached(("instances", str(path), path.stat().st_mtime_ns), lambda: cls(path))


def annotation_mask(ann: dict[str, Any], height: int, width: int, *, tolerance: float = 1.0) -> np.ndarray:
    """The annotation's mask as a bool array (H, W): union of its polygon parts, or its RLE, via pycocotools.

    Rejects: polygon_invalid (no part with ≥ 3 points), polygon_out_of_bounds (a vertex more than
    ``tolerance`` px outside the image), size_mismatch (RLE size differs from the image).
    Degenerate parts (< 3 points) enclose no area and are skipped.
    """
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    ann_id = ann.get("id")
    if isinstance(seg, list):
        parts = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not parts:
            raise RejectError("polygon_invalid", f"annotation {ann_id}: no polygon part with at least 3 points")
        for part in parts:
            try:
                xy = np.asarray(part, dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                raise RejectError("polygon_invalid", f"annotation {ann_id}: polygon coordinates are not numbers") from None
            # NaN/inf pass every bounds comparison and make pycocotools allocate without limit: refuse them first.
            if not np.isfinite(xy).all():
                raise RejectError("polygon_invalid", f"annotation {ann_id}: polygon has a non-finite coordinate (NaN or inf)")
            if (xy[:, 0].min() < -tolerance or xy[:, 1].min() < -tolerance
                    or xy[:, 0].max() > width + tolerance or xy[:, 1].max() > height + tolerance):
                raise RejectError(
                    "polygon_out_of_bounds",
                    f"annotation {ann_id}: polygon spans x {xy[:, 0].min():.1f}..{xy[:, 0].max():.1f}, "
                    f"y {xy[:, 1].min():.1f}..{xy[:, 1].max():.1f}, outside the {width}x{height} image",
                )
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(s) for s in seg["size"]] != [height, width]:
            raise RejectError("size_mismatch", f"annotation {ann_id}: RLE size {seg['size']} != image [{height}, {width}]")
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)  # uncompressed RLE (iscrowd)
        else:
            counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
            rle = {"size": [height, width], "counts": counts}
    else:
        raise RejectError("polygon_invalid", f"annotation {ann_id}: segmentation is neither polygons nor RLE")
    return mask_utils.decode(rle) > 0


def sentences_of(ref: dict[str, Any], where: str) -> list[str]:
    """The ref's sentences (the refer ``sent`` field, ``raw`` as fallback); empty ones dropped; none → reject."""
    sentences = ref.get("sentences")
    if sentences is not None and not isinstance(sentences, list):
        raise RejectError("annotation_invalid", f"{where}: field 'sentences' is {type(sentences).__name__}, expected a list")
    out = []
    for s in sentences or []:
        text = s.get("sent") or s.get("raw") if isinstance(s, dict) else s
        if isinstance(text, str) and text.strip():
            out.append(text)
    if not out:
        raise RejectError("empty_text", f"{where}: no non-empty sentence")
    return out


class _ReferBase(BaseReader):
    """Shared by the refer-style readers: dataset directory, images, instances, image resolution."""

    refs_basename = "refs"
    tolerance: float = 1.0

    def __init__(
        self,
        root: Path | str,
        split: str,
        *,
        split_by: str | None = None,
        images: Path | str | None = None,
        polygon_tolerance: float = 1.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        self.variant = split_by or self.source_spec().default_variant
        super().__init__(root, split, max_pixels=max_pixels, max_bytes=max_bytes)
        self.images = Path(images).resolve() if images else self._default_images()
        self.tolerance = float(polygon_tolerance)

    def _default_images(self) -> Path:
        for candidate in _image_dir_candidates(self.root):
            if candidate.is_dir():
                return candidate.resolve()
        return _image_dir_candidates(self.root)[0].resolve()

    def options(self) -> dict[str, Any]:
        return {**super().options(), "images": str(self.images), "polygon_tolerance": self.tolerance}

    @property
    def dataset_dir(self) -> Path:
        nested = self.root / self.source
        return nested if nested.is_dir() else self.root

    def instances(self) -> CocoInstances:
        path = self.dataset_dir / "instances.json"
        if not path.exists():
            raise SourceError(f"{path}: missing; the refer datasets ship instances.json beside the refs file")
        return CocoInstances.cached(path)

    def check_inputs(self) -> None:
        super().check_inputs()
        self.instances()

    def load_image(self, image_id: int, where: str) -> tuple[StoredImage, dict[str, Any]]:
        info = self.instances().images.get(int(image_id))
        if info is None:
            raise RejectError("unknown_image", f"{where}: image_id {image_id} is not in {self.dataset_dir / 'instances.json'}")
        names = [info.get("file_name") or "", f"{int(image_id):012d}.jpg"]
        for name in names:
            if name and (self.images / name).exists():
                image = read_image(self.images, name, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
                break
        else:
            raise RejectError("image_missing", f"{where}: none of {[n for n in names if n]} exists in {self.images}")
        expected = (int(info.get("width", image.width)), int(info.get("height", image.height)))
        if image.size != expected:
            raise RejectError(
                "size_mismatch",
                f"{where}: image is {image.width}x{image.height}, instances.json says {expected[0]}x{expected[1]}",
            )
        return image, info

    def annotation(self, ann_id: int, where: str) -> dict[str, Any]:
        ann = self.instances().annotations.get(int(ann_id))
        if ann is None:
            raise RejectError("unknown_annotation", f"{where}: ann_id {ann_id} is not in {self.dataset_dir / 'instances.json'}")
        return ann

    def _load_refs(self, path: Path) -> Any:
        """The refs file's content (a list of dicts); each dataset reads its own format."""
        raise NotImplementedError

    def _list_records(self) -> list[dict[str, Any]]:
        """The split's refs in file order."""
        path = self.refs_path
        refs = self._load_refs(path)
        if not isinstance(refs, list):
            raise SourceError(f"{path}: expected a list of refs, got {type(refs).__name__}")
        # Entries that belong to no split (not a dict, or a split the spec does not know) are rejects of the
        # variant's first split, so that every entry of the file is counted exactly once across its splits.
        splits = self.source_spec().splits(self.variant)
        records: list[dict[str, Any]] = []
        for position, ref in enumerate(refs):
            if isinstance(ref, dict) and ref.get("split") == self.split:
                records.append(ref)
            elif self.split == splits[0] and not (isinstance(ref, dict) and ref.get("split") in splits):
                got = f"split {ref.get('split')!r}" if isinstance(ref, dict) else f"a {type(ref).__name__}"
                records.append({_INVALID: f"entry {position} is {got}; expected a dict with split in {splits}",
                                "ref_id": f"entry{position}"})
        return records

    def location(self, index: int, record: dict[str, Any]) -> str:
        return f"{self.refs_path}#ref_id={record.get('ref_id')}"

    def read(self, index: int, record: dict[str, Any]) -> Sample | Reject:
        if _INVALID in record:
            return Reject(self.location(index, record), "annotation_invalid", record[_INVALID])
        return super().read(index, record)


class RefCocoReader(_ReferBase):
    """RefCOCO (splitBy unc or google). Records: the split's refs in file order."""

    source = "refcoco"

    @property
    def refs_path(self) -> Path:
        return self.dataset_dir / f"refs({self.variant}).p"

    def _load_refs(self, path: Path) -> Any:
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; expected the refer toolkit's refs({self.variant}).p")
        return safe_load(path)

    def _read(self, index: int, ref: dict[str, Any]) -> Sample:
        where = f"ref {ref.get('ref_id')}"
        sentences = sentences_of(ref, where)
        image, info = self.load_image(ref["image_id"], where)
        ann = self.annotation(ref["ann_id"], where)
        if int(ann.get("image_id", ref["image_id"])) != int(ref["image_id"]):
            raise RejectError("unknown_annotation", f"{where}: ann {ref['ann_id']} belongs to image {ann.get('image_id')}, not {ref['image_id']}")
        mask = annotation_mask(ann, image.height, image.width, tolerance=self.tolerance)
        meta = self.meta(
            "referring_mask", ref["ref_id"], sentences=sentences, no_target=False,
            ref_id=int(ref["ref_id"]), ann_ids=[int(ref["ann_id"])], image_id=int(ref["image_id"]),
            category_id=int(ref.get("category_id", ann.get("category_id", 0))),
            sent_ids=[int(s) for s in ref.get("sent_ids") or []], image_file=info.get("file_name", ""),
            **self.image_fields(image),
        )
        return Sample(self.key(index, ref["ref_id"]), meta, {image.ext: image.data, "mask.png": encode_mask_png(mask)})


class RefCocoPlusReader(RefCocoReader):
    """RefCOCO+ (splitBy unc)."""

    source = "refcoco+"


class RefCocoGReader(RefCocoReader):
    """RefCOCOg (splitBy umd, the default, or google)."""

    source = "refcocog"
