"""An edit pair while it is being made: the planned job plus its pixels, masks, result and scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.instructions import EditJob
from pipeline.synthetic.scene import load_index, read_rgb
from pipeline.synthetic.stages import MapStage


@dataclass
class EditPair:
    job: EditJob
    source: np.ndarray  # (H, W, 3) uint8
    annotation_mask: np.ndarray  # (H, W) bool
    mask: np.ndarray | None = None  # (H, W) bool, the object (SAM or annotation)
    edit_mask: np.ndarray | None = None  # (H, W) bool, mask dilated: pixels the editor may change
    others_mask: np.ndarray | None = None  # (H, W) bool, every other annotated object (never edited)
    mask_source: str = ""  # "sam" or "annotation"
    target: np.ndarray | None = None  # (H, W, 3) uint8, the kept candidate
    candidates: list[Any] = field(default_factory=list)  # editors.Candidate, best-of-k
    negatives: list[Any] = field(default_factory=list)  # candidates that failed verification (with reasons)
    scores: dict[str, float] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)


class LoadPairs(MapStage):
    """EditJob → EditPair with the source pixels and the annotation mask (decoded again, not stored in the plan)."""

    name = "load"

    def __init__(self, mirror_categories: tuple[str, ...], scenes: str | None):
        self.mirror_categories, self.scenes = mirror_categories, scenes

    def map(self, job: EditJob) -> EditPair | Reject:
        split_dir = str(Path(job.image_path).parent)
        index = load_index(job.annotations, split_dir, job.split, self.mirror_categories, self.scenes)
        ann = index.by_ann_id.get(job.target["ann_id"])
        if ann is None:
            return Reject(job.location, "annotation_missing", f"annotation {job.target['ann_id']} not in {job.annotations}")
        try:
            source = read_rgb(Path(job.image_path))
        except OSError as err:
            return Reject(job.location, "image_unreadable", f"{job.image_path}: {err}")
        others = np.zeros(source.shape[:2], bool)
        for other in index.anns.get(job.image_id, ()):
            if other["id"] != ann["id"] and index.categories.get(other["category_id"]) not in self.mirror_categories:
                others |= index.mask(other)
        return EditPair(job, source, index.mask(ann), others_mask=others)
