"""Safe image access for the converters: stay inside the root, refuse bombs, detect truncation.

Images are passed through as stored (never re-encoded), so we only need their header: size and
format come from ``PIL.Image.open`` (which parses the header and decodes no pixels), truncation from
the container structure (a JPEG's last scan must be followed by an EOI marker; a PNG must end with
IEND). Full decoding is reserved for images whose pixels we actually use (label maps, masks) or for
callers that ask for it (``full_decode=True``).

EXIF: the bytes are kept as stored (never re-encoded), but sizes are the displayed ones. COCO's
width/height and annotations, and labelme's (LISA), refer to the image as displayed, i.e. after its
EXIF Orientation tag is applied, so masks are made at the displayed size and sizes are compared
with the displayed size. A sample whose JPEG has an orientation other than 1 records it as
``exif_orientation`` in its json: a loader must apply ``PIL.ImageOps.exif_transpose`` to the image
(not to the masks) to line them up.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# PIL's own default bomb threshold (≈ 89.5 MP, a 0.25 GiB RGB buffer); configurable per reader.
DEFAULT_MAX_PIXELS = 89_478_485
_EXT_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_EXIF_ORIENTATION = 0x0112


class RejectError(Exception):
    """Raised inside a reader for bad input; the reader turns it into a `Reject` with this reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StoredImage:
    """An image as stored: its bytes untouched, plus what its header says.

    ext: member extension for the stored format (jpg, png, webp).
    size: (width, height) of the stored pixel grid (before any EXIF rotation).
    """

    data: bytes
    ext: str
    stored_size: tuple[int, int]
    mode: str
    exif_orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, i.e. after the EXIF orientation (5-8 swap the axes)."""
        w, h = self.stored_size
        return (h, w) if self.exif_orientation in (5, 6, 7, 8) else (w, h)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]


@functools.lru_cache(maxsize=4096)
def _real_dir(path: str) -> str:
    # Directories do not move during a conversion; resolving each file's whole path instead costs one
    # lstat per path component per file, which dominated the reader's syscalls.
    return os.path.realpath(path)


def resolve_inside(root: Path | str, relative: str | os.PathLike) -> Path:
    """``root / relative`` with symlinks resolved; `RejectError` ``path_escape`` when it leaves ``root``.

    Annotation files name images; a name such as ``../../etc/passwd`` or a symlink pointing outside
    the dataset must not make us read (and publish) arbitrary files.
    """
    root_real = _real_dir(os.fspath(root))
    joined = os.path.join(root_real, os.fspath(relative))
    parent, name = os.path.split(joined)
    candidate = os.path.join(_real_dir(parent), name)
    if os.path.islink(candidate):
        candidate = os.path.realpath(candidate)
    if candidate != root_real and not candidate.startswith(root_real.rstrip(os.sep) + os.sep):
        raise RejectError("path_escape", f"{relative!s} resolves to {candidate}, outside the dataset root {root_real}")
    return Path(candidate)


def _check_structure(data: bytes, fmt: str, name: str) -> None:
    if fmt == "JPEG":
        # Entropy-coded data never contains 0xFF followed by a marker byte (it is byte-stuffed), so a
        # complete file has an end-of-image marker after its last start-of-scan. Searched from the ends
        # (the EOI sits near the end of a good file) so that a good file costs a few hundred bytes of scan.
        eoi = data.rfind(b"\xff\xd9")
        first_sos = data.find(b"\xff\xda")
        if first_sos < 0 or eoi < first_sos or data.find(b"\xff\xda", eoi) >= 0:
            raise RejectError("image_truncated", f"{name}: JPEG has no end-of-image marker after its last scan")
    elif fmt == "PNG":
        if data.rfind(b"IEND", max(0, len(data) - 64)) < 0:
            raise RejectError("image_truncated", f"{name}: PNG does not end with an IEND chunk")


def probe_image(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, full_decode: bool = False) -> StoredImage:
    """Header-check image bytes; reasons: image_corrupt, image_truncated, image_too_large, image_format.

    Decodes pixels only when ``full_decode`` is set.
    """
    if not data:
        raise RejectError("image_truncated", f"{name}: file is empty")
    # Structure first: a file cut short inside its headers would otherwise read as "corrupt".
    magic = "JPEG" if data[:2] == b"\xff\xd8" else "PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else ""
    if magic:
        _check_structure(data, magic, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise RejectError("image_too_large", f"{name}: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise RejectError("image_corrupt", f"{name}: not a readable image ({err})") from None
    fmt = img.format or ""
    if fmt not in _EXT_BY_FORMAT:
        raise RejectError("image_format", f"{name}: stored format {fmt!r}; expected one of {sorted(_EXT_BY_FORMAT)}")
    width, height = img.size
    if width * height > max_pixels:
        raise RejectError(
            "image_too_large", f"{name}: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
        )
    if width < 1 or height < 1:
        raise RejectError("image_corrupt", f"{name}: empty image {width}x{height}")
    orientation = 1
    if fmt == "JPEG":
        try:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block does not make the pixels unusable
            orientation = 1
    if full_decode:
        try:
            img.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise RejectError("image_corrupt", f"{name}: pixel data does not decode ({err})") from None
    return StoredImage(data, _EXT_BY_FORMAT[fmt], (width, height), img.mode, orientation)


def read_image(
    root: Path | str, relative: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, full_decode: bool = False
) -> StoredImage:
    """Read ``root/relative`` safely (see `resolve_inside`, `probe_image`); ``image_missing`` when absent."""
    path = resolve_inside(root, relative)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RejectError("image_missing", f"{path}: file not found") from None
    except IsADirectoryError:
        raise RejectError("image_missing", f"{path}: is a directory, not an image") from None
    return probe_image(data, str(path), max_pixels=max_pixels, full_decode=full_decode)


def decode_gray(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a single-channel 8-bit PNG (label map) to an array (H, W) uint8; corrupt or wrong mode → reject."""
    return _decode(data, name, max_pixels, ("L", "P"))


def decode_pil(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, modes: tuple[str, ...] | None = None) -> Image.Image:
    """Decode image bytes fully (limits and structure checked first); ``modes``: the PIL modes accepted."""
    probe_image(data, name, max_pixels=max_pixels)  # limits and structure before any pixel is decoded
    try:
        img = Image.open(io.BytesIO(data))
        if modes is not None and img.mode not in modes:
            raise RejectError("labelmap_mode", f"{name}: mode {img.mode}; expected one of {list(modes)}")
        img.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise RejectError("image_corrupt", f"{name}: pixel data does not decode ({err})") from None
    return img


def _decode(data: bytes, name: str, max_pixels: int, modes: tuple[str, ...] | None) -> np.ndarray:
    img = decode_pil(data, name, max_pixels=max_pixels, modes=modes)
    return np.asarray(img) if modes is not None else np.asarray(img.convert("L"))


def decode_binary_mask(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, threshold: int = 128) -> np.ndarray:
    """Decode any mask image to a bool array (H, W): luminance ≥ ``threshold`` is the region."""
    return _decode(data, name, max_pixels, None) >= threshold


def encode_mask_png(mask: np.ndarray) -> bytes:
    """(H, W) bool/0-1 array → 8-bit single-channel PNG bytes, 0 background, 255 region (deterministic)."""
    arr = np.where(np.asarray(mask) > 0, np.uint8(255), np.uint8(0))
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def encode_gray_png(arr: np.ndarray) -> bytes:
    """(H, W) uint8 array → single-channel PNG bytes, values unchanged."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "L").save(buf, "PNG", compress_level=6)
    return buf.getvalue()
