"""Direct tests of pipeline/schema.py: members required, optional and unexpected; strict json fields; keys; kinds."""

from __future__ import annotations

import pytest

from pipeline.records import Sample
from pipeline.schema import SchemaError, load_schemas, validate_sample

BASE = {"source": "magicbrush", "split": "train", "source_id": "7"}


def _edit(files=("src.jpg", "tgt.png"), **meta) -> Sample:
    m = {"kind": "edit_pair", **BASE, "instruction": "make it red", **meta}
    return Sample("k-1", m, {f: b"x" for f in files})


def test_schemas_cover_every_kind_with_their_members():
    s = load_schemas()
    assert set(s) == {"edit_pair", "seg_labelmap", "referring_mask", "reasoning_seg", "vqa", "caption"}
    assert s["edit_pair"].required == ("src.image", "tgt.image") and s["edit_pair"].optional == ("mask.png",)
    assert s["reasoning_seg"].required == ("image", "mask.png", "ignore.png")
    assert s["edit_pair"]._expand("src.image") == ("src.jpg", "src.jpeg", "src.png", "src.webp")
    assert s["vqa"]._expand("image") == ("jpg", "jpeg", "png", "webp")


def test_valid_samples_pass_including_optional_member_and_field():
    validate_sample(_edit())
    validate_sample(_edit(files=("src.webp", "tgt.jpeg", "mask.png"), instructions=["a", "b"]))
    validate_sample(Sample("c", {"kind": "caption", **BASE, "caption": "a cat"}, {}))


@pytest.mark.parametrize(("files", "message"), [
    (("src.jpg",), "needs exactly one of tgt.jpg or tgt.jpeg or tgt.png or tgt.webp"),
    (("tgt.jpg",), "needs exactly one of src.jpg"),
    (("src.jpg", "src.png", "tgt.jpg"), "needs exactly one of src.jpg"),
    (("src.jpg", "tgt.jpg", "mask.jpg"), "unexpected members ['mask.jpg']"),
    (("src.jpg", "tgt.jpg", "txt"), "unexpected members ['txt']"),
])
def test_member_rules(files, message):
    with pytest.raises(SchemaError) as err:
        validate_sample(_edit(files=files))
    assert message in str(err.value) and "'k-1' (edit_pair)" in str(err.value)


def test_members_of_other_kinds_are_unexpected():
    s = Sample("r", {"kind": "referring_mask", **BASE, "sentences": ["x"], "no_target": False},
               {"jpg": b"", "mask.png": b"", "ignore.png": b""})
    with pytest.raises(SchemaError, match=r"unexpected members \['ignore.png'\]"):
        validate_sample(s)
    caption = Sample("c", {"kind": "caption", **BASE, "caption": "a"}, {"jpg": b""})
    with pytest.raises(SchemaError, match="unexpected members"):
        validate_sample(caption)


@pytest.mark.parametrize(("change", "field"), [
    ({"instruction": None}, "instruction"),
    ({"instruction": 3}, "instruction"),            # strict: no int → str coercion
    ({"source_id": 7}, "source_id"),
    ({"instructions": "one"}, "instructions"),
    ({"split": b"train"}, "split"),
])
def test_json_fields_are_strict(change, field):
    with pytest.raises(SchemaError, match=f"json field '{field}'"):
        validate_sample(_edit(**change))


def test_missing_required_field_and_optional_field_absent():
    s = _edit()
    del s.meta["instruction"]
    with pytest.raises(SchemaError, match="json field 'instruction'"):
        validate_sample(s)
    s = _edit()
    assert "instructions" not in s.meta
    validate_sample(s)  # optional field may be absent
    validate_sample(_edit(instructions=None))


def test_strict_bool_in_referring_mask():
    s = Sample("r", {"kind": "referring_mask", **BASE, "sentences": ["x"], "no_target": 0}, {"jpg": b"", "mask.png": b""})
    with pytest.raises(SchemaError, match="no_target"):
        validate_sample(s)


@pytest.mark.parametrize("key", ["", "a.b", "a/b"])
def test_keys_without_dots_or_slashes(key):
    s = _edit()
    s.key = key
    with pytest.raises(SchemaError, match="keys must be non-empty with no '.' or '/'"):
        validate_sample(s)


@pytest.mark.parametrize("kind", [None, "edit", "EDIT_PAIR"])
def test_unknown_kind(kind):
    s = _edit()
    s.meta["kind"] = kind
    with pytest.raises(SchemaError, match="json field 'kind'"):
        validate_sample(s)
