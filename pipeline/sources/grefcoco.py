"""gRefCOCO (kind ``referring_mask``): generalised refs with several targets or none.

Layout: ``<root>/grefcoco/grefs(unc).json`` (or the ``.p`` pickle) and ``<root>/grefcoco/instances.json``.
``ann_id`` and ``category_id`` are lists; a multi-target ref's mask is the union of its annotations'
masks; a no-target ref (``ann_id == [-1]`` / ``no_target: true``) gets an empty mask and
``no_target: true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Sample
from pipeline.sources.base import load_json_file
from pipeline.sources.images import RejectError, encode_mask_png
from pipeline.sources.refcoco import _ReferBase, annotation_mask, sentences_of
from pipeline.sources.safe_pickle import safe_load


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class GRefCocoReader(_ReferBase):
    """gRefCOCO splitBy unc. Records: the split's grefs in file order."""

    source = "grefcoco"

    @property
    def refs_path(self) -> Path:
        base = self.dataset_dir / f"grefs({self.variant})"
        json_path = base.with_suffix(".json")
        return json_path if json_path.exists() else base.with_suffix(".p")

    def _load_refs(self, path: Path) -> Any:
        if not path.exists():
            raise FileNotFoundError(f"{path.with_suffix('.json')}: missing; expected gRefCOCO's grefs({self.variant}).json")
        if path.suffix == ".json":
            return load_json_file(path, f"gRefCOCO's grefs({self.variant}).json")
        return safe_load(path)

    def _read(self, index: int, ref: dict[str, Any]) -> Sample:
        where = f"gref {ref.get('ref_id')}"
        sentences = sentences_of(ref, where)
        ann_ids = [a for a in _as_list(ref.get("ann_id")) if a != -1]
        no_target = bool(ref.get("no_target")) or not ann_ids
        if ref.get("no_target") and ann_ids:
            raise RejectError("annotation_invalid", f"{where}: no_target is true but ann_id lists {ann_ids}")
        image, info = self.load_image(ref["image_id"], where)
        mask = np.zeros((image.height, image.width), dtype=bool)
        for ann_id in ann_ids:
            ann = self.annotation(ann_id, where)
            if int(ann.get("image_id", ref["image_id"])) != int(ref["image_id"]):
                raise RejectError("unknown_annotation", f"{where}: ann {ann_id} belongs to image {ann.get('image_id')}")
            mask |= annotation_mask(ann, image.height, image.width, tolerance=self.tolerance)
        meta = self.meta(
            "referring_mask", ref["ref_id"], sentences=sentences, no_target=no_target,
            ref_id=int(ref["ref_id"]), ann_ids=ann_ids, image_id=int(ref["image_id"]),
            category_ids=[c for c in _as_list(ref.get("category_id")) if c != -1],
            sent_ids=[int(s) for s in ref.get("sent_ids") or []], image_file=info.get("file_name", ""),
            **self.image_fields(image),
        )
        return Sample(self.key(index, ref["ref_id"]), meta, {image.ext: image.data, "mask.png": encode_mask_png(mask)})
