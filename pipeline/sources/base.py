"""What every source reader shares: record caching, spec, keys, json, and the Reject plumbing.

A reader subclass lists its records in ``_list_records`` (cheap, deterministic order) and turns one
into a `Sample` in ``_read``, raising `RejectError` for bad input. The record list lives in a
per-process cache rather than on the instance, so a reader pickles small (one copy is sent to the
worker pool per shard) and each worker process lists the records once.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.records import Reject, Sample, make_key
from pipeline.sources.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RejectError, StoredImage
from pipeline.sources.spec import SourceSpec, load_spec

log = logging.getLogger(__name__)

class SourceError(ValueError):
    """A whole-file input is unusable (missing or corrupt annotation file, missing image directory).

    Raised by `BaseReader.check_inputs` before any shard is written: one line naming the file and the fix.
    """


class DuplicateKeyError(ValueError):
    """A JSON object repeats a key (json.loads would silently keep the last value)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(text: str | bytes) -> Any:
    """`json.loads` that refuses duplicate keys (`DuplicateKeyError`) instead of keeping the last one."""
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)


def load_json_file(path: Path, what: str) -> Any:
    """A whole annotation file, parsed strictly; `SourceError` naming the file and the fix otherwise."""
    if not path.exists():
        raise SourceError(f"{path}: missing; expected {what}")
    try:
        return parse_json(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, DuplicateKeyError) as err:
        raise SourceError(f"{path}: not valid JSON ({err}); expected {what}; download it again") from None


_CACHE_ENTRIES = 4  # listings kept per process; one conversion uses one, a test session a few
_CACHE: OrderedDict[tuple, Any] = OrderedDict()


def process_cached(key: tuple, build: Callable[[], Any]) -> Any:
    """Memoise ``build()`` under ``key`` in this process (small LRU)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = build()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return value


def clear_cache() -> None:
    """Forget every cached listing (after changing files under a root in place)."""
    _CACHE.clear()


class BaseReader:
    """Common parts of the `pipeline.convert.SourceReader` implementations.

    root: the source's root directory (as documented in its spec's `layout`).
    split: a split name from the spec.
    max_pixels: images with more pixels are rejected (``image_too_large``) before any decoding.
    max_bytes: files larger than this are rejected (``file_too_large``) before they are read.
    """

    source: str = ""
    variant: str = "default"

    def __init__(self, root: Path | str, split: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root).resolve()
        self.split = split
        self.max_pixels = int(max_pixels)
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be ≥ 1, got {max_pixels}")
        self.max_bytes = int(max_bytes)
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be ≥ 1, got {max_bytes}")
        splits = self.source_spec().splits(self.variant)
        if split not in splits:
            raise ValueError(f"{self.source}: unknown split {split!r}; expected one of {splits}")

    # -- what subclasses provide -------------------------------------------------------------
    def _list_records(self) -> list[Any]:
        raise NotImplementedError

    def _read(self, index: int, record: Any) -> Sample:
        raise NotImplementedError

    def location(self, index: int, record: Any) -> str:
        return f"{self.root}#{index}"

    def options(self) -> dict[str, Any]:
        """Reader options that change the output; part of the spec hash and the listing cache key."""
        return {"max_pixels": self.max_pixels, "max_bytes": self.max_bytes}

    # -- the SourceReader protocol --------------------------------------------------------------
    @property
    def code_module(self) -> str:
        """The module whose source text is part of every shard fingerprint (pipeline.fingerprint.code_fingerprint)."""
        return type(self).__module__

    def image_dirs(self) -> list[Path]:
        """Directories the records' images are read from (checked to exist by `check_inputs`)."""
        images = getattr(self, "images", None)
        return [images] if isinstance(images, Path) else []

    def check_inputs(self) -> None:
        """Load every whole-file input (the record listing and what it needs) and check the image directories.

        Raises `SourceError` with one line naming the file: the driver calls this before writing any
        shard, so a corrupt annotation file stops the run instead of becoming one reject per record.
        """
        if not self.root.exists():
            raise SourceError(f"{self.root}: --root does not exist")
        for directory in self.image_dirs():
            if not directory.is_dir():
                raise SourceError(f"{directory}: image directory does not exist; pass --images pointing at the "
                                  f"{self.source} images (see data_specs/sources/{self.source}.yaml)")
        try:
            self.records()
        except SourceError:
            raise
        except (OSError, ValueError, UnicodeDecodeError, pickle.UnpicklingError) as err:
            raise SourceError(str(err)) from None

    @classmethod
    def source_spec(cls) -> SourceSpec:
        return load_spec(cls.source)

    def spec(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "variant": self.variant,
            "root": str(self.root),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in self.options().items()},
            "source_spec": self.source_spec().model_dump(mode="json"),
        }

    def records(self) -> Sequence[Any]:
        key = (type(self).__module__, type(self).__qualname__, str(self.root), self.split, repr(sorted(self.options().items())))
        return process_cached(key, self._list_records)

    def read(self, index: int, record: Any) -> Sample | Reject:
        try:
            return self._read(index, record)
        except RejectError as err:
            return Reject(self.location(index, record), err.reason, err.detail)

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        """Directory name of this source's datasets under the output root."""
        return self.source if self.variant == self.source_spec().default_variant else f"{self.source}-{self.variant}"

    def key(self, index: int, *parts: object) -> str:
        """Unique in the dataset through the record index; later parts only help a human find the record."""
        return make_key(self.source.replace("+", "plus"), self.split, f"{index:08d}", *parts)

    def meta(self, kind: str, source_id: object, **fields: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"kind": kind, "source": self.source, "split": self.split, "source_id": str(source_id)}
        if self.variant != "default":
            meta["variant"] = self.variant
        meta.update(fields)
        return meta

    @staticmethod
    def image_fields(image: StoredImage, prefix: str = "") -> dict[str, Any]:
        """json fields describing a stored image: size, and the EXIF orientation when it is not 1."""
        fields: dict[str, Any] = {f"{prefix}width": image.width, f"{prefix}height": image.height}
        if image.exif_orientation != 1:
            fields[f"{prefix}exif_orientation"] = image.exif_orientation
        return fields

    @classmethod
    def available_splits(cls, root: Path | str, **options: Any) -> list[str]:
        """Splits of the spec (for the reader's variant) whose files exist under ``root``."""
        return cls.source_spec().splits(options.get("split_by"))


def require_text(value: Any, what: str) -> str:
    """A non-empty, stripped string or `RejectError` ``empty_text``."""
    if not isinstance(value, str) or not value.strip():
        raise RejectError("empty_text", f"{what} is {value!r}; expected non-empty text")
    return value
