"""Hostile and broken input: restricted unpickling, pixel limits, path escapes, truncation, EXIF."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert_fixtures import build_sources, jpeg
from pipeline.records import Reject, Sample
from pipeline.sources import get_reader
from pipeline.sources.base import clear_cache
from pipeline.sources.images import RejectError, probe_image, read_image
from pipeline.sources.safe_pickle import UnsafePickleError, safe_load, safe_loads


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1, "x": _Exploit(marker)}], protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refused to load global (posix|os|nt)\.system"):
        safe_loads(payload, source="refs(unc).p")
    assert not marker.exists()
    pickle.loads(payload)  # the same bytes do execute under plain pickle: the test payload is real
    assert marker.exists()


def test_hostile_refs_file_stops_the_reader_with_a_clear_error(tmp_path):
    fx = build_sources(tmp_path / "src")
    marker = tmp_path / "pwned"
    refs = fx.roots["refcoco"] / "refcoco" / "refs(unc).p"
    refs.write_bytes(pickle.dumps([_Exploit(marker)], protocol=4))
    clear_cache()
    reader = get_reader("refcoco", fx.roots["refcoco"], "train", **fx.options["refcoco"])
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p"):
        reader.records()
    assert not marker.exists()


def test_python2_byte_strings_decode_as_utf8(tmp_path):
    # protocol 2 as Python 2 writes a str: SHORT_BINSTRING ('U'), here holding UTF-8 bytes of "café"
    text = "café".encode("utf-8")
    data = b"\x80\x02]q\x00}q\x01U\x04sentq\x02U" + bytes([len(text)]) + text + b"q\x03sa."
    assert safe_loads(data) == [{"sent": "café"}]
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps([{"a": (1, 2.5, None, True), "b": {3, 4}, "c": b"raw"}], protocol=4))
    assert safe_load(path) == [{"a": (1, 2.5, None, True), "b": {3, 4}, "c": "raw"}]


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header) with a tiny IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_pixel_limit_refuses_bombs_without_decoding():
    with pytest.raises(RejectError) as err:
        probe_image(_png_with_size(50_000, 50_000), "bomb.png")  # 2.5 GP: over PIL's hard limit too
    assert err.value.reason == "image_too_large"
    with pytest.raises(RejectError) as err:
        probe_image(_png_with_size(200, 200), "big.png", max_pixels=100 * 100)
    assert err.value.reason == "image_too_large" and "max_pixels=10000" in err.value.detail


def test_max_pixels_option_rejects_in_a_conversion(tmp_path):
    fx = build_sources(tmp_path / "src")
    clear_cache()
    reader = get_reader("llava-instruct", fx.roots["llava-instruct"], "train", max_pixels=40 * 30 - 1, **fx.options["llava-instruct"])
    results = [reader.read(i, r) for i, r in enumerate(reader.records())]
    reasons = [r.reason if isinstance(r, Reject) else "kept" for r in results]
    # records 0 and 1 use the 40x30 image (1200 px), record 2 the 48x36 one: all three over 1199 px; records 3-5
    # fail their own checks first (empty text, path escape, missing image), so nothing is kept.
    assert reasons == ["image_too_large"] * 3 + ["empty_text", "path_escape", "image_missing"]
    sizes = [Image.open(fx.roots["llava-instruct"].parent / "coco" / "train2017" / name).size
             for name in ("000000000001.jpg", "000000000002.jpg")]
    assert [w * h > 40 * 30 - 1 for w, h in sizes] == [True, True]  # independent check of the pixel counts
    # one pixel more allowed and the 40x30 image passes: the limit is inclusive
    clear_cache()
    reader = get_reader("llava-instruct", fx.roots["llava-instruct"], "train", max_pixels=40 * 30, **fx.options["llava-instruct"])
    reasons = [r.reason if isinstance(r, Reject) else "kept" for r in (reader.read(i, r) for i, r in enumerate(reader.records()))]
    assert reasons[:3] == ["kept", "kept", "image_too_large"]


def test_truncated_and_corrupt_images(tmp_path):
    good = jpeg(32, 24, 1)
    assert probe_image(good, "ok.jpg").size == (32, 24)
    for cut in (len(good) - 2, len(good) // 2):
        with pytest.raises(RejectError) as err:
            probe_image(good[:cut], "cut.jpg")
        assert err.value.reason == "image_truncated"
    with pytest.raises(RejectError) as err:
        probe_image(b"not an image at all", "junk.jpg")
    assert err.value.reason == "image_corrupt"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "PNG")
    with pytest.raises(RejectError) as err:
        probe_image(buf.getvalue()[:-12], "cut.png")
    assert err.value.reason == "image_truncated"


def test_paths_stay_inside_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.jpg").write_bytes(jpeg(8, 8, 0))
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    for name in ("../outside.jpg", "link.jpg", str(tmp_path / "outside.jpg")):
        with pytest.raises(RejectError) as err:
            read_image(root, name)
        assert err.value.reason == "path_escape"
    with pytest.raises(RejectError) as err:
        read_image(root, "absent.jpg")
    assert err.value.reason == "image_missing"


def test_exif_orientation_is_recorded_and_bytes_untouched():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    probed = probe_image(buf.getvalue(), "rotated.jpg")
    assert probed.exif_orientation == 6 and probed.data == buf.getvalue()
    assert probed.stored_size == (20, 10) and probed.size == (10, 20), "sizes are as displayed, after the tag"
