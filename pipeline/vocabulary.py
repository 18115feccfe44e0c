"""Names the whole project shares: COCO categories, COCO-Stuff labels, Reason-Edit categories, source names.

Written out by hand because no installed library ships them (pycocotools reads categories from an
annotation file; the Reason-Edit benchmark is a folder of files). Every module that needs one of
these names imports it from here: the converters, the sample-data generator, the synthetic builder,
the evaluation reader and the flows.

COCO 2017 uses category ids 1..90 with 10 gaps (plus 91, which only COCO-Stuff names); COCO-Stuff's
``labels.txt`` id = COCO category id for things, names the 11 ids COCO 2017 never uses, and continues
with the 91 stuff classes; a label-map pixel value is ``labels.txt`` id − 1 (255 = unlabeled).
Reason-Edit folder names are those of the released benchmark (SmartEdit, CVPR 2024).
"""

from __future__ import annotations

# ---- COCO 2017 instance categories: (id, name, supercategory) -----------------------------------------
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)
CATEGORY_ID: dict[str, int] = {name: cid for cid, name, _ in COCO_CATEGORIES}
CATEGORY_NAME: dict[int, str] = {cid: name for cid, name, _ in COCO_CATEGORIES}

# COCO-Stuff names of the thing ids COCO 2017 dropped (they never occur in the label maps).
UNUSED_THING_NAMES: dict[int, str] = {
    12: "street sign", 26: "hat", 29: "shoe", 30: "eye glasses", 45: "plate", 66: "mirror", 68: "window",
    69: "desk", 71: "door", 83: "blender", 91: "hair brush",
}

# The 91 COCO-Stuff stuff classes, labels.txt ids 92..182 in this (alphabetical) order.
STUFF_NAMES: tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCOSTUFF_UNLABELED = 255  # label-map value of unlabeled pixels


def cocostuff_labels() -> dict[int, str]:
    """labels.txt as {id: name}: 0 unlabeled, 1..91 things (COCO ids, unused ones included), 92..182 stuff."""
    labels = {0: "unlabeled"}
    for cid in range(1, 92):
        labels[cid] = CATEGORY_NAME.get(cid) or UNUSED_THING_NAMES[cid]
    for offset, name in enumerate(STUFF_NAMES):
        labels[92 + offset] = name
    return labels


# labels.txt names in label-value order (value v = labels.txt id v + 1): 0 person … 181 wood.
COCOSTUFF_CLASS_NAMES: tuple[str, ...] = tuple(name for cid, name in sorted(cocostuff_labels().items()) if cid)


# ---- Reason-Edit (SmartEdit's benchmark) categories ---------------------------------------------------
REASON_EDIT_UNDERSTANDING: tuple[str, ...] = ("1-Left-Right", "2-Relative-Size", "3-Mirror", "4-Color", "5-Multiple-Objects")
REASON_EDIT_REASONING: tuple[str, ...] = ("6-Reasoning",)
REASON_EDIT_CATEGORIES: tuple[str, ...] = REASON_EDIT_UNDERSTANDING + REASON_EDIT_REASONING
# The synthetic builder's scenario names for the same six categories.
SCENARIO_FOLDERS: dict[str, str] = {
    "left_right": "1-Left-Right", "relative_size": "2-Relative-Size", "mirror": "3-Mirror",
    "colour": "4-Color", "multiple_objects": "5-Multiple-Objects", "reasoning": "6-Reasoning",
}


# ---- Source datasets: the names the CLI, the flows and the sample json's `source` field use -----------
SOURCE_GROUPS: dict[str, tuple[str, ...]] = {
    "segmentation": ("cocostuff", "refcoco", "refcoco+", "refcocog", "grefcoco", "reasonseg"),
    "vqa": ("llava-instruct",),
    "edit": ("instructpix2pix", "magicbrush"),
}
SOURCES: tuple[str, ...] = tuple(s for group in SOURCE_GROUPS.values() for s in group)
