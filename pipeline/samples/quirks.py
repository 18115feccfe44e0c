"""Encoders for the real-world image quirks converters must survive, and plain deterministic writers.

COCO contains JPEGs whose pixels are stored rotated with an EXIF Orientation tag (annotations and
width/height are in the displayed orientation), grayscale JPEGs and a few CMYK JPEGs. Every writer
here is byte-deterministic: fixed quality and subsampling, no timestamps, JSON with sorted keys.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

JPEG_QUALITY = 90
EXIF_ORIENTATION_TAG = 0x0112

# Orientation tag → the transpose that turns displayed pixels into stored pixels (the inverse of
# what PIL.ImageOps.exif_transpose applies when reading).
_STORE_TRANSPOSE = {3: "ROTATE_180", 6: "ROTATE_90", 8: "ROTATE_270"}


def jpeg_bytes(image, *, quality: int = JPEG_QUALITY, orientation: int | None = None, mode: str | None = None) -> bytes:
    """Encode a displayed RGB PIL image as JPEG bytes.

    orientation: store the pixels rotated and tag them, so that applying the tag gives `image` back (3, 6 or 8).
    mode: "L" for grayscale, "CMYK" for a CMYK JPEG; None keeps RGB.
    """
    from PIL import Image

    kwargs: dict[str, Any] = {"quality": quality, "subsampling": 2, "optimize": False}
    if orientation is not None:
        if orientation not in _STORE_TRANSPOSE:
            raise ValueError(f"EXIF orientation {orientation} not supported here; use one of {sorted(_STORE_TRANSPOSE)}")
        image = image.transpose(getattr(Image.Transpose, _STORE_TRANSPOSE[orientation]))
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        kwargs["exif"] = exif.tobytes()
    if mode is not None:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def png_bytes(image) -> bytes:
    """PNG bytes of a PIL image (fixed compression level, no metadata chunks)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_json(path: Path, obj: Any, *, indent: int | None = None, encoding: str = "utf-8") -> Path:
    """JSON with sorted keys (the real files' key order carries no meaning); `encoding` allows legacy code pages."""
    text = json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=encoding == "ascii")
    return write_bytes(path, (text + ("\n" if indent is not None else "")).encode(encoding))
