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
import stat
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# PIL's own default bomb threshold (≈ 89.5 MP, a 0.25 GiB RGB buffer); configurable per reader.
DEFAULT_MAX_PIXELS = 89_478_485
# Largest file read whole (an 89 MP RGB PNG stored uncompressed is ≈ 256 MiB); configurable per reader.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_EXT_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_EXIF_ORIENTATION = 0x0112

try:  # libspng: a faster PNG decoder for label maps; PIL is the fallback
    from pyspng import load as _spng_load
except ImportError:  # pragma: no cover - pyspng is a dependency, but a missing wheel must not break conversion
    _spng_load = None


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


_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: markers without a length


def _jpeg_first_scan(data: bytes) -> int:
    """Offset of the main image's first start-of-scan, found by walking the marker segments; -1 if cut short.

    Walking the segments (rather than searching for the SOS bytes) skips APPn payloads whole, so an EXIF
    thumbnail, a complete JPEG with its own scan and end marker inside APP1, cannot stand in for the image.
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return -1


def _png_chunks(data: bytes) -> tuple[bool, set[bytes]]:
    """(complete, chunk types): complete when the chunk chain reaches IEND inside the file (bytes after IEND
    are allowed, as libpng allows them). Reads 8 bytes per chunk, never the payloads."""
    pos, n, types = 8, len(data), set()
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        types.add(kind)
        if kind == b"IEND":
            return pos + 12 <= n, types
        pos += 12 + length
    return False, types


def _check_structure(data: bytes, fmt: str, name: str) -> None:
    if fmt == "JPEG":
        # Entropy-coded data never contains 0xFF followed by a marker byte (it is byte-stuffed), so a
        # complete file has an end-of-image marker after its last start-of-scan. The EOI is searched from
        # the end (it sits there in a good file), so a good file costs its headers plus a few bytes of scan.
        first_sos = _jpeg_first_scan(data)
        eoi = data.rfind(b"\xff\xd9")
        if first_sos < 0 or eoi < first_sos or data.find(b"\xff\xda", eoi) >= 0:
            raise RejectError("image_truncated", f"{name}: JPEG has no end-of-image marker after its last scan")
    elif fmt == "PNG":
        if not _png_chunks(data)[0]:
            raise RejectError("image_truncated", f"{name}: PNG chunks end before the IEND chunk")


_PNG_MODES = {(8, 0): "L", (8, 2): "RGB", (8, 3): "P", (8, 4): "LA", (8, 6): "RGBA"}


def _png_header(data: bytes) -> tuple[tuple[int, int], str, bool] | None:
    """((width, height), PIL mode, has eXIf) from a PNG's IHDR (its CRC checked), or None to let PIL decide."""
    if len(data) < 33 or data[12:16] != b"IHDR" or int.from_bytes(data[8:12], "big") != 13:
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None  # PIL then reports the broken header
    mode = _PNG_MODES.get((data[24], data[25]))
    if mode is None or data[28] != 0:  # other bit depths, interlaced: PIL's open knows them all
        return None
    return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")), mode, b"eXIf" in _png_chunks(data)[1]


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise RejectError(
            "image_too_large", f"{name}: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
        )
    if width < 1 or height < 1:
        raise RejectError("image_corrupt", f"{name}: empty image {width}x{height}")


def probe_image(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                full_decode: bool = False) -> StoredImage:
    """Header-check image bytes; reasons: image_corrupt, image_truncated, image_too_large, image_format, file_too_large.

    Decodes pixels only when ``full_decode`` is set.
    """
    if not data:
        raise RejectError("image_truncated", f"{name}: file is empty")
    if len(data) > max_bytes:
        raise RejectError("file_too_large", f"{name}: {len(data)} bytes exceeds max_bytes={max_bytes}")
    # Structure first: a file cut short inside its headers would otherwise read as "corrupt".
    magic = "JPEG" if data[:2] == b"\xff\xd8" else "PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else ""
    if magic:
        _check_structure(data, magic, name)
    if magic == "PNG" and not full_decode and (header := _png_header(data)) is not None:
        # The common PNG needs only its 25-byte IHDR: PIL's open costs as much as the rest of a label map's checks.
        (width, height), mode, has_exif = header
        if not has_exif:
            _check_size(width, height, max_pixels, name)
            return StoredImage(data, "png", (width, height), mode, 1)
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
    _check_size(width, height, max_pixels, name)
    # Every format: PNG (eXIf) and WebP carry EXIF too, and loaders apply exif_transpose to all of them.
    # PIL reads a PNG's EXIF only after decoding all pixels (eXIf may follow IDAT), so look for the chunk first.
    orientation = 1
    if fmt != "PNG" or b"eXIf" in _png_chunks(data)[1]:
        try:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block does not make the pixels unusable
            orientation = 1
    if orientation not in range(1, 9):
        orientation = 1  # PIL's exif_transpose ignores values outside 1-8 too
    if full_decode:
        try:
            img.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise RejectError("image_corrupt", f"{name}: pixel data does not decode ({err})") from None
    return StoredImage(data, _EXT_BY_FORMAT[fmt], (width, height), img.mode, orientation)


def read_regular_file(path: Path | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file, opened once; rejects: image_missing, not_a_file, file_too_large.

    Opened non-blocking and checked with fstat on the open descriptor: a FIFO, device or socket named
    like an image is a reject, never a read that blocks forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise RejectError("image_missing", f"{path}: file not found") from None
    except IsADirectoryError:
        raise RejectError("not_a_file", f"{path}: is a directory, not a file") from None
    except OSError as err:
        raise RejectError("not_a_file", f"{path}: cannot be opened ({err.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectError("not_a_file", f"{path}: not a regular file (a FIFO, device, socket or directory)")
        if st.st_size > max_bytes:
            raise RejectError("file_too_large", f"{path}: {st.st_size} bytes exceeds max_bytes={max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size + 1)  # asking for max_bytes would allocate that much up front
            if len(data) > st.st_size:  # the file grew after fstat: read on, still bounded
                data += f.read(max_bytes + 1 - len(data))
        if len(data) > max_bytes:  # grew while we read it
            raise RejectError("file_too_large", f"{path}: more than max_bytes={max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def read_image(
    root: Path | str, relative: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES, full_decode: bool = False,
) -> StoredImage:
    """Read ``root/relative`` safely (see `resolve_inside`, `read_regular_file`, `probe_image`)."""
    path = resolve_inside(root, relative)
    data = read_regular_file(path, max_bytes=max_bytes)
    return probe_image(data, str(path), max_pixels=max_pixels, full_decode=full_decode)


def decode_gray(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a single-channel 8-bit PNG (label map) to an array (H, W) uint8; corrupt or wrong mode → reject."""
    return np.asarray(decode_pil(data, name, max_pixels=max_pixels, modes=("L", "P"), formats=("PNG",)))


def decode_pil(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, modes: tuple[str, ...] | None = None,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode image bytes fully (limits and structure checked first); ``modes`` / ``formats``: those accepted."""
    stored = probe_image(data, name, max_pixels=max_pixels)  # limits and structure before any pixel is decoded
    fmt = {v: k for k, v in _EXT_BY_FORMAT.items()}[stored.ext]
    if formats is not None and fmt not in formats:
        # A JPEG named .png is not a label map: its values are smeared by the lossy coding.
        raise RejectError("labelmap_format", f"{name}: stored as {fmt}; expected {' or '.join(formats)}")
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


def decode_labelmap(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A label map (8-bit single-channel PNG) → (H, W) uint8 values as stored; rejects name what is wrong.

    Header and structure are checked first (no pixels decoded); 8-bit grayscale maps, all of COCO-Stuff's,
    are then decoded with libspng (pyspng), ≈ 1.5x faster than PIL's zlib path here; palette maps with PIL.
    """
    stored = probe_image(data, name, max_pixels=max_pixels)
    if stored.ext != "png":  # a JPEG named .png is not a label map: lossy coding smears its values
        raise RejectError("labelmap_format", f"{name}: stored as {stored.ext.upper()}; expected PNG")
    if stored.mode not in ("L", "P"):
        raise RejectError("labelmap_mode", f"{name}: mode {stored.mode}; expected one of ['L', 'P']")
    if stored.mode == "L" and _spng_load is not None:
        try:
            arr = _spng_load(data)
        except Exception as err:  # libspng reports CRC and zlib errors as RuntimeError/ValueError
            raise RejectError("image_corrupt", f"{name}: pixel data does not decode ({err})") from None
        if arr.dtype == np.uint8 and arr.shape == (stored.stored_size[1], stored.stored_size[0]):
            return arr
    return np.asarray(decode_pil(data, name, max_pixels=max_pixels, modes=("L", "P"), formats=("PNG",)))


def histogram(arr: np.ndarray) -> list[int]:
    """Counts of each value 0..255 of a (H, W) uint8 array (PIL's C histogram: ≈ 3x faster than np.bincount)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return Image.frombuffer("L", (arr.shape[1], arr.shape[0]), arr, "raw", "L", 0, 1).histogram()


def decode_binary_mask(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, threshold: int = 128) -> np.ndarray:
    """Decode any mask image to a bool array (H, W): luminance ≥ ``threshold`` is the region.

    A mask stored with values 0/1 (an index mask rather than a black/white image) is read as such:
    when no pixel exceeds 1, every pixel of 1 is the region.
    """
    gray = _decode(data, name, max_pixels, None)
    if gray.size and int(gray.max()) == 1:
        return gray == 1
    return gray >= threshold


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
