"""Reason-Edit readers: the official folder layout and our webdataset evaluation shards."""

from __future__ import annotations

import io
import json

import pytest
from evaluation_fixtures import CATEGORY_FILES, box_mask, make_reason_edit, pattern_image
from PIL import Image

from model.evaluation.reason_edit import (
    CATEGORIES,
    read_benchmark,
    read_category,
    read_edit_shards,
    read_reason_edit,
)


def test_reads_the_official_layout_nested_one_level_down(tmp_path):
    make_reason_edit(tmp_path, per_category=2, nested="ReasonEdit_benchmark")
    items = read_reason_edit(tmp_path)
    assert [i.category for i in items] == [c for c in CATEGORIES for _ in range(2)]
    assert {i.group for i in items if i.category == "6-Reasoning"} == {"reasoning"}
    assert {i.group for i in items if i.category != "6-Reasoning"} == {"understanding"}
    first = items[0]
    assert first.key == "1-Left-Right/001"
    assert first.instruction == "make the object 1-left-right 0"  # right-stripped before "CLIP:"
    assert first.clip_text == "a photo of thing 0"
    assert first.mask_path.name == "001_mask.jpg" and first.image_path.name == "001.png"
    assert first.load_image().mode == "RGB" and first.load_mask().mode == "L"
    assert len({i.key for i in items}) == len(items)


def test_pairs_by_sorted_order(tmp_path):
    folder = tmp_path / "4-Color"
    folder.mkdir()
    for stem, seed in (("b", 1), ("a", 2), ("c", 3)):
        pattern_image(seed, 32).save(folder / f"{stem}.png")
        box_mask(32, (0, 0, 4 + seed, 8)).save(folder / f"{stem}_mask.jpg")
    (folder / "Color_text.txt").write_text("first CLIP: one\nsecond CLIP: two\n\nthird CLIP: three\n")
    items = read_category(folder)
    assert [(i.key, i.instruction, i.clip_text) for i in items] == [
        ("4-Color/a", "first", "one"),
        ("4-Color/b", "second", "two"),
        ("4-Color/c", "third", "three"),
    ]


def test_mismatched_counts_name_the_folder_and_the_counts(tmp_path):
    make_reason_edit(tmp_path, per_category=2)
    (tmp_path / "3-Mirror" / "002_mask.jpg").unlink()
    with pytest.raises(ValueError, match=r"3-Mirror: no mask for \['002.png'\]; each input <stem>.png needs <stem>_mask.jpg"):
        read_reason_edit(tmp_path)
    (tmp_path / "3-Mirror" / "002.png").unlink()  # now the counts differ: 1 input, 2 prompt lines
    with pytest.raises(ValueError, match=r"3-Mirror: 1 input images \(\*\.png\) with masks and 2 prompt lines"):
        read_reason_edit(tmp_path)


def test_bad_prompt_line_names_file_and_line(tmp_path):
    make_reason_edit(tmp_path, per_category=2)
    text = tmp_path / "2-Relative-Size" / CATEGORY_FILES["2-Relative-Size"]
    text.write_text("make it bigger CLIP: a big dog\nmake it smaller without separator\n")
    with pytest.raises(ValueError, match=r"Size_text.txt:2.*no 'CLIP:'"):
        read_reason_edit(tmp_path)


def test_missing_benchmark_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of the Reason-Edit category folders"):
        read_reason_edit(tmp_path)


def _png(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_reads_edit_pair_shards_with_webdataset(tmp_path):
    import webdataset as wds

    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    for s in range(2):
        with wds.TarWriter(str(shard_dir / f"eval-{s:06d}.tar")) as sink:
            sink.write({
                "__key__": f"s{s}_a",
                "src.png": _png(pattern_image(s, 32)),
                "mask.png": _png(box_mask(32, (2, 2, 10, 10))),
                "json": json.dumps({"kind": "edit_pair", "instruction": " remove the cup ", "clip_text": "a table",
                                    "category": "6-Reasoning"}).encode(),
            })
            sink.write({
                "__key__": f"s{s}_b",
                "src.jpg": _png(pattern_image(10 + s, 32), "JPEG"),
                "mask.png": _png(box_mask(32, (4, 4, 20, 20))),
                "json": json.dumps({"instruction": "make it red"}).encode(),
            })
            sink.write({"__key__": f"s{s}_c", "image.jpg": _png(pattern_image(3, 32), "JPEG"),
                        "json": json.dumps({"kind": "vqa", "conversations": []}).encode()})
    items = read_benchmark(shard_dir)
    assert [i.key for i in items] == ["s0_a", "s0_b", "s1_a", "s1_b"]  # the vqa samples are skipped
    a, b = items[0], items[1]
    assert (a.instruction, a.clip_text, a.category, a.group) == ("remove the cup", "a table", "6-Reasoning", "reasoning")
    assert (b.clip_text, b.category, b.group) == (None, "shards", "other")
    assert a.load_mask().mode == "L" and a.load_mask().getpixel((5, 5)) == 255 and a.load_mask().getpixel((20, 20)) == 0
    assert b.load_image().size == (32, 32)
    # a brace pattern reads the same shards
    assert [i.key for i in read_edit_shards(str(shard_dir / "eval-{000000..000001}.tar"))] == [i.key for i in items]


def test_shard_sample_without_mask_is_an_error(tmp_path):
    import webdataset as wds

    path = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "k1", "src.png": _png(pattern_image(0, 16)),
                    "json": json.dumps({"instruction": "x"}).encode()})
    with pytest.raises(ValueError, match=r"'k1'.*no mask.png"):
        list(read_edit_shards(path))


def test_masks_pair_by_stem_not_sorted_order(tmp_path):
    """Names 1.png … 11.png: sorted order puts "11_mask.jpg" before "1_mask.jpg", mis-pairing 3 of 11 items."""
    folder = tmp_path / "1-Left-Right"
    folder.mkdir()
    lines = []
    for n in range(1, 12):
        pattern_image(n, 32).save(folder / f"{n}.png")
        box_mask(32, (0, 0, n + 1, 4)).save(folder / f"{n}_mask.png".replace(".png", ".jpg"), quality=95)
        lines.append(f"edit number {n} CLIP: thing {n}")
    (folder / "Left_Right_text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = read_category(folder)
    assert [i.key for i in items] == [f"1-Left-Right/{n}" for n in range(1, 12)]  # natural order of stems
    for n, item in enumerate(items, start=1):
        assert item.mask_path.name == f"{n}_mask.jpg" and item.instruction == f"edit number {n}"
        width = sum(1 for x in range(32) if item.load_mask().getpixel((x, 1)) > 127)
        assert width == n + 1  # the mask drawn for this very image


def test_prompt_file_with_a_byte_order_mark_and_non_utf8_names_the_file(tmp_path):
    make_reason_edit(tmp_path, per_category=1)
    text = tmp_path / "4-Color" / CATEGORY_FILES["4-Color"]
    text.write_bytes(b"\xef\xbb\xbf" + "make it blau CLIP: a blue thing\n".encode("utf-8"))
    item = next(i for i in read_reason_edit(tmp_path) if i.category == "4-Color")
    assert item.instruction == "make it blau"  # no "\ufeff" glued to the first instruction
    text.write_bytes("make it grün CLIP: x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"Color_text.txt: not UTF-8 text"):
        read_reason_edit(tmp_path)


def test_undecodable_image_names_the_file(tmp_path):
    make_reason_edit(tmp_path, per_category=1)
    (tmp_path / "3-Mirror" / "001.png").write_bytes(b"not a png")
    item = next(i for i in read_reason_edit(tmp_path) if i.category == "3-Mirror")
    with pytest.raises(ValueError, match=r"3-Mirror/001.png: cannot decode input image"):
        item.load_image()


def test_missing_category_folder_is_flagged_in_the_report(tmp_path):
    import shutil

    from evaluation_fixtures import brighten_editor

    from model.evaluation.evaluate import evaluate

    make_reason_edit(tmp_path / "bench", per_category=1, size=32)
    shutil.rmtree(tmp_path / "bench" / "3-Mirror")
    items = read_benchmark(tmp_path / "bench")
    assert items.missing == ["3-Mirror"] and len(items) == 5
    report = evaluate(brighten_editor, tmp_path / "bench", tmp_path / "out", judging_page=False, grids=False)
    assert report.flags[0] == "category folders missing from the benchmark, not scored: 3-Mirror"
    assert "not scored: 3-Mirror" in (tmp_path / "out" / "report.md").read_text()


def test_shards_carry_target_images_and_source_captions(tmp_path):
    from evaluation_fixtures import make_edit_shards, square_scene

    items = read_benchmark(make_edit_shards(tmp_path / "shards", n=3, size=32))
    src, mask, tgt = square_scene(1, 32)
    item = items[1]
    assert item.has_target and item.source_text == "a blue square"
    assert list(item.load_target().getdata()) == list(tgt.getdata())
    assert list(item.load_mask().getdata()) == list(mask.getdata())
