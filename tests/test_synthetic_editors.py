"""Editor pieces: masks that spare neighbours, feathered paste-back, crops around the mask, OpenCV removal,
and the verifier's ring rule against an independent expectation."""

from __future__ import annotations

import numpy as np

from pipeline.synthetic.editors import crop_box, paste_back, remove_opencv, removal_candidates
from pipeline.synthetic.masks import edit_region
from pipeline.synthetic.verify import ring_statistics


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_edit_region_grows_the_mask_but_spares_other_objects():
    obj = _disk(60, 80, 30, 30, 8)
    other = _disk(60, 80, 30, 52, 8)  # 22 px away: inside a 15 px margin
    region = edit_region(obj, other, 15)
    assert region[obj].all() and not region[other].any()
    assert region[30, 43] and not region[30, 44]  # grown up to the neighbour (x 44–60), not into it
    box = edit_region(obj, None, 2, box=True)
    ys, xs = np.nonzero(box)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 40, 20, 40) and box.sum() == 21 * 21


def test_dilation_matches_a_disk_structuring_element():
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    from pipeline.synthetic.masks import dilate

    mask = _disk(90, 120, 40, 50, 12) | _disk(90, 120, 60, 90, 4)
    for radius in (1, 5, 15):
        assert np.array_equal(dilate(mask, radius), binary_dilation(mask, structure=disk(radius)))


def test_feathered_paste_back_keeps_the_outside_exact():
    src = np.zeros((20, 20, 3), np.uint8)
    edited = np.full((20, 20, 3), 200, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = paste_back(src, edited, mask, feather_px=3)
    assert (out[~mask] == 0).all()
    assert out[5, 10, 0] == round(200 * 1 / 4)  # 1 px inside: distance 1 → alpha 1/(3+1)
    assert out[10, 10, 0] == 200  # deep inside: the edit itself
    assert np.array_equal(paste_back(src, edited, mask), np.where(mask[..., None], edited, src))


def test_crop_box_is_a_square_around_the_mask_inside_the_image():
    mask = np.zeros((300, 400), bool)
    mask[100:140, 300:380] = True  # 40 x 80 near the right edge
    y0, y1, x0, x1 = crop_box(mask, context=0.5)
    assert y1 - y0 == x1 - x0 == 160 and 0 <= x0 and x1 <= 400 and 0 <= y0 and y1 <= 300
    assert y0 <= 100 and y1 >= 140 and x0 <= 300 and x1 >= 380


def test_opencv_removal_fills_from_the_background_and_candidates_vary():
    yy, xx = np.mgrid[0:64, 0:64]
    background = np.stack([60 + xx, 100 + yy, np.full_like(xx, 150)], -1).astype(np.uint8)
    src = background.copy()
    obj = _disk(64, 64, 32, 32, 9)
    src[obj] = (220, 30, 30)
    region = edit_region(obj, None, 4)
    filled = remove_opencv(src, region, "ns")
    assert np.array_equal(filled[~region], src[~region])
    assert np.abs(filled[region].astype(int) - background[region].astype(int)).mean() < 6  # a smooth ramp is easy
    stats = ring_statistics(src, filled, obj, region, None, 8)
    assert stats["ring_de_p90"] < 3 and stats["object_like"] == 0
    blob = src.copy()  # "removed" into a blob of the object's colour: the verifier must see it
    stats = ring_statistics(src, blob, obj, region, None, 8)
    assert stats["ring_de_p90"] > 30 and stats["object_like"] > 0.5
    assert removal_candidates("ns", 15, 3) == [("ns", 15), ("ns", 10), ("ns", 5)]
    assert removal_candidates("telea", 15, 4)[3] == ("ns", 15)
    assert removal_candidates("biharmonic", 5, 3) == [("biharmonic", 5)]
