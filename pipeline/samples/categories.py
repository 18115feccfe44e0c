"""The real COCO 2017 instance categories and the COCO-Stuff 164k label list, as the generator uses them.

The tables themselves are in `pipeline.vocabulary` (shared with the converters and the builder).
"""

from __future__ import annotations

# The tables live in the shared vocabulary (product code reads them there, never from the sample generator).
from pipeline.vocabulary import (  # noqa: E402,F401
    CATEGORY_ID,
    CATEGORY_NAME,
    COCO_CATEGORIES,
    STUFF_NAMES,
    UNUSED_THING_NAMES,
    cocostuff_labels,
)
from pipeline.vocabulary import COCOSTUFF_UNLABELED as UNLABELED  # noqa: E402,F401


def stuff_value(name: str) -> int:
    """The label-map pixel value of a stuff class (labels.txt id − 1)."""
    return 91 + STUFF_NAMES.index(name)


def thing_value(category_id: int) -> int:
    """The label-map pixel value of a COCO thing category (category id − 1)."""
    return category_id - 1


def coco_categories_json() -> list[dict]:
    """The ``categories`` array of a COCO 2017 instances file."""
    return [{"supercategory": sup, "id": cid, "name": name} for cid, name, sup in COCO_CATEGORIES]
