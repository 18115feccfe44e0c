"""Reason-Edit: the SmartEdit evaluation benchmark, and our own evaluation shards, as typed items.

Official layout (219 pairs)::

    <root>/1-Left-Right/        *.png inputs, *_mask.jpg masks (white = edited region), one *.txt
    <root>/2-Relative-Size/     ...
    <root>/3-Mirror/
    <root>/4-Color/
    <root>/5-Multiple-Objects/  (these five: the "understanding" group)
    <root>/6-Reasoning/         (the "reasoning" group)

Each text file (read as ``utf-8-sig``: a byte-order mark is dropped) has one line per input,
``<instruction> CLIP: <target description>``. Lines pair with the inputs in natural order of their stems
(``1, 2, …, 10, 11``; for zero-padded names the same as sorted order), and each input's mask is found by name,
``<stem>_mask.jpg``: pairing masks by sorted order, as the released script does, mis-pairs ``1.png … 11.png``
(``"11_mask.jpg" < "1_mask.jpg"``). The category folders may sit anywhere below ``<root>`` (the released archive
nests them one level down); a missing one is logged and listed in ``Benchmark.missing`` for the report.

Evaluation shards (our webdataset format): ``edit_pair`` samples with members ``src.png`` or ``src.jpg``,
``mask.png`` (8-bit L, 255 = edited region), optionally the ground-truth edit ``tgt.png``/``tgt.jpg`` (then the
MagicBrush-style target metrics apply) and ``json`` holding ``instruction`` and optionally ``clip_text``,
``source_caption`` and ``category``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.vocabulary import REASON_EDIT_CATEGORIES as CATEGORIES
from pipeline.vocabulary import REASON_EDIT_REASONING as REASONING_CATEGORIES
from pipeline.vocabulary import REASON_EDIT_UNDERSTANDING as UNDERSTANDING_CATEGORIES

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


CLIP_SEPARATOR = "CLIP:"

Group = Literal["understanding", "reasoning", "other"]


def group_of(category: str) -> Group:
    """The Table 1 column a category belongs to (shard categories outside Reason-Edit: "other")."""
    if category in UNDERSTANDING_CATEGORIES:
        return "understanding"
    if category in REASONING_CATEGORIES or category.lower() == "reasoning":
        return "reasoning"
    return "other"


@dataclass(frozen=True)
class EditItem:
    """One benchmark item: an input image, its edit-region mask, an instruction and a CLIP target text.

    Images come either from files (official layout) or from bytes (shards); ``load_image``/``load_mask``
    decode them the same way in both cases.
    """

    key: str
    """Unique within a benchmark: ``<category>/<file stem>`` or ``<shard key>``; safe as a relative path."""
    category: str
    group: Group
    instruction: str
    clip_text: str | None
    """Description of the edited object for the foreground CLIP score; None: the CLIP column is n/a."""
    image_path: Path | None = None
    mask_path: Path | None = None
    image_bytes: bytes | None = None
    mask_bytes: bytes | None = None
    target_path: Path | None = None
    target_bytes: bytes | None = None
    """The ground-truth edited image, if the benchmark has one (evaluation shards' ``tgt.*``)."""
    source_text: str | None = None
    """A caption of the input, for CLIP directional similarity; None: the empty caption is used."""

    @property
    def has_target(self) -> bool:
        return self.target_path is not None or self.target_bytes is not None

    def load_image(self) -> Image.Image:
        """The input image, RGB at its stored size."""
        from PIL import Image

        return _decode(self.image_path, self.image_bytes, "RGB", f"{self.key}: input image")

    def load_mask(self) -> Image.Image:
        """The edit-region mask, mode L at its stored size, undecoded values (JPEG noise kept)."""
        from PIL import Image

        return _decode(self.mask_path, self.mask_bytes, "L", f"{self.key}: mask")

    def load_target(self) -> Image.Image | None:
        """The ground-truth edited image, RGB, or None when the benchmark has none."""
        if not self.has_target:
            return None
        return _decode(self.target_path, self.target_bytes, "RGB", f"{self.key}: target image")

    def content_digest(self) -> str:
        """sha256 of everything that defines the item (text and image bytes), for the benchmark hash."""
        import hashlib

        h = hashlib.sha256()
        for part in (self.key, self.category, self.instruction, self.clip_text or "", self.source_text or ""):
            h.update(part.encode("utf-8") + b"\0")
        for path, data in ((self.image_path, self.image_bytes), (self.mask_path, self.mask_bytes),
                           (self.target_path, self.target_bytes)):
            h.update(path.read_bytes() if path is not None else (data or b""))
            h.update(b"\0")
        return h.hexdigest()


def _decode(path: Path | None, data: bytes | None, mode: str, what: str) -> Image.Image:
    """Open an image file or bytes; a decode error names the file (or the item) and says what it should be."""
    from PIL import Image, UnidentifiedImageError

    src = path if path is not None else io.BytesIO(data or b"")
    try:
        with Image.open(src) as im:
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path if path is not None else what}: cannot decode {what.split(': ')[-1]} ({err}); "
                         "replace the file with a valid PNG/JPEG") from err


def parse_prompt_line(line: str, where: str) -> tuple[str, str]:
    """Split ``<instruction> CLIP: <target description>`` into (instruction, clip_text).

    Like the released script: the instruction is right-stripped and the CLIP text is everything after the
    first ``CLIP:`` (one following space dropped).
    """
    if CLIP_SEPARATOR not in line:
        raise ValueError(f"{where}: line {line!r} has no '{CLIP_SEPARATOR}' part; expected '<instruction> CLIP: <text>'")
    instruction, _, clip_text = line.partition(CLIP_SEPARATOR)
    instruction, clip_text = instruction.strip(), clip_text.strip()
    if not instruction or not clip_text:
        raise ValueError(f"{where}: line {line!r} has an empty instruction or CLIP text")
    return instruction, clip_text


def _find_category_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for category in CATEGORIES:
        hits = sorted(p for p in [root / category, *root.glob(f"**/{category}")] if p.is_dir())
        if hits:
            found[category] = hits[0]
    return found


def natural_key(stem: str) -> list:
    """Sort key that orders digit runs by value: 1, 2, …, 10, 11 (not 1, 10, 11, 2)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", stem) if part]


def read_category(folder: Path, category: str | None = None) -> list[EditItem]:
    """Items of one category folder: inputs in natural order of their stems, each with ``<stem>_mask.jpg``,
    paired with the text lines in that order."""
    category = category or folder.name
    images = sorted((p for p in folder.glob("*.png") if not p.stem.endswith("_mask")), key=lambda p: natural_key(p.stem))
    masks = {p.name for p in folder.glob("*_mask.jpg")}
    texts = sorted(folder.glob("*.txt"))
    if len(texts) != 1:
        raise ValueError(f"{folder}: expected exactly one .txt prompt file, found {len(texts)} ({[t.name for t in texts]})")
    try:
        text = texts[0].read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{texts[0]}: not UTF-8 text ({err}); re-save the prompt file as UTF-8") from err
    lines = [ln for ln in text.splitlines() if ln.strip()]
    unmasked = [p.name for p in images if f"{p.stem}_mask.jpg" not in masks]
    if unmasked:
        raise ValueError(f"{folder}: no mask for {unmasked}; each input <stem>.png needs <stem>_mask.jpg beside it")
    orphans = sorted(masks - {f"{p.stem}_mask.jpg" for p in images})
    if orphans:
        raise ValueError(f"{folder}: masks {orphans} have no input image <stem>.png")
    if len(images) != len(lines):
        raise ValueError(
            f"{folder}: {len(images)} input images (*.png) with masks and {len(lines)} prompt lines in "
            f"{texts[0].name}; lines pair with the inputs in order, so the counts must be equal"
        )
    items = []
    for i, (image, line) in enumerate(zip(images, lines)):
        mask = folder / f"{image.stem}_mask.jpg"
        instruction, clip_text = parse_prompt_line(line, f"{texts[0]}:{i + 1}")
        items.append(
            EditItem(
                key=f"{category}/{image.stem}",
                category=category,
                group=group_of(category),
                instruction=instruction,
                clip_text=clip_text,
                image_path=image,
                mask_path=mask,
            )
        )
    return items


class Benchmark(list):
    """The items of a benchmark (a list of EditItem) plus what the report must flag about it."""

    def __init__(self, items=(), missing: list[str] | None = None) -> None:
        super().__init__(items)
        self.missing: list[str] = list(missing or [])
        """Reason-Edit category folders that were not found (their columns are not scored)."""


def benchmark_hash(items: list[EditItem]) -> str:
    """sha256 over the items' content digests in order: changes when any image, mask, target or text changes."""
    import hashlib

    h = hashlib.sha256()
    for item in items:
        h.update(item.content_digest().encode())
    return h.hexdigest()


def read_reason_edit(root: Path | str, categories: tuple[str, ...] = CATEGORIES) -> Benchmark:
    """All items of a Reason-Edit benchmark directory in category order; missing folders in ``.missing``.

    Raises FileNotFoundError when ``root`` holds none of the requested category folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Reason-Edit benchmark directory not found")
    found = _find_category_dirs(root)
    missing = [c for c in categories if c not in found]
    if len(missing) == len(categories):
        raise FileNotFoundError(f"{root}: none of the Reason-Edit category folders {list(categories)} found below it")
    if missing:
        logger.warning("%s: category folders missing, not scored: %s", root, missing)
    items = Benchmark(missing=missing)
    for category in categories:
        if category in found:
            items.extend(read_category(found[category], category))
    return items


def _safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def _shard_urls(pattern: str | Path) -> list[str] | str:
    path = Path(pattern)
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
        if not urls:
            raise FileNotFoundError(f"{path}: no *.tar shards in this directory")
        return urls
    return str(pattern)  # a file or a brace pattern such as shard-{000000..000003}.tar, expanded by webdataset


def read_edit_shards(pattern: str | Path) -> Iterator[EditItem]:
    """``edit_pair`` evaluation items from webdataset shards (a directory of .tar files, a file, or a brace pattern).

    Samples of another kind are skipped; an edit_pair without ``mask.png`` or ``instruction`` is an error,
    since the background metrics need the mask.
    """
    import webdataset as wds

    dataset = wds.WebDataset(_shard_urls(pattern), shardshuffle=False, empty_check=False)
    for sample in dataset:
        where = f"{sample.get('__url__', pattern)}: sample {sample.get('__key__')!r}"
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if meta.get("kind", "edit_pair") != "edit_pair":
            continue
        image = sample.get("src.png") or sample.get("src.jpg") or sample.get("src.jpeg")
        if image is None:
            raise ValueError(f"{where}: no src.png / src.jpg member; members are {sorted(k for k in sample if not k.startswith('__'))}")
        if "mask.png" not in sample:
            raise ValueError(f"{where}: no mask.png member; evaluation needs the edit-region mask (8-bit L, 255 = edited)")
        instruction = meta.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"{where}: json field 'instruction' missing or empty")
        category = str(meta.get("category") or "shards")
        target = sample.get("tgt.png") or sample.get("tgt.jpg") or sample.get("tgt.jpeg")
        yield EditItem(
            key=_safe_key(sample["__key__"]),
            category=category,
            group=group_of(category),
            instruction=instruction.strip(),
            clip_text=(meta.get("clip_text") or None),
            image_bytes=image,
            mask_bytes=sample["mask.png"],
            target_bytes=target,
            source_text=(meta.get("source_caption") or meta.get("input_caption") or None),
        )


def read_benchmark(source: str | Path) -> Benchmark:
    """Reason-Edit directory or evaluation shards, whichever ``source`` is."""
    path = Path(source)
    if path.is_dir() and _find_category_dirs(path):
        return read_reason_edit(path)
    if path.is_dir() or path.suffix == ".tar" or "{" in str(source):
        return Benchmark(read_edit_shards(source))
    raise FileNotFoundError(f"{source}: neither a Reason-Edit directory nor webdataset shards (.tar, dir of .tar, brace pattern)")
