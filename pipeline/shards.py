"""The shard contract, in one place: file names, the index, sample kinds, members, and reading them back.

Every writer and reader of our webdataset shards takes its names from here: the index file
(``shardindex.json``, a wids index of kind ``wids-shard-index-v1``), the rejects file, the sample kinds
and image extensions of ``data_specs/schemas.yaml``, loading and checking a manifest, iterating the
samples of a dataset in index order, and decoding a sample's members per kind.

    from pipeline.shards import iter_samples, decode_sample
    for raw in iter_samples("/data/shards/refcoco/train"):      # {"__key__", "__url__", "json": b"...", "jpg": b"..."}
        sample = decode_sample(raw)                            # json → dict, image → RGB (EXIF applied), mask → (H, W) uint8

Orientation rule (the same from converter to loader to synthetic builder): image bytes are stored as
they came; sizes, masks and polygons refer to the image *as displayed*, i.e. after its EXIF
Orientation tag, so every reader decodes images with `PIL.ImageOps.exif_transpose` (`decode_image`)
and never transposes masks.

Sequential reading uses the standard library's `tarfile` (importing webdataset imports torch, ≈1.7 s,
and it cannot report a malformed member without stopping); random access by sample index uses
`wids` (`open_indexed`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data_specs import spec_path
from pipeline.storage import as_path, is_remote

INDEX_NAME = "shardindex.json"
REJECTS_NAME = "rejects.jsonl"
WIDS_KIND = "wids-shard-index-v1"
SHARD_SUFFIX = ".tar"
SCHEMAS_FILE = spec_path("schemas.yaml")

_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_EXT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class ManifestError(ValueError):
    """A shardindex.json that is missing, not ours, or malformed; the message names the file and the field."""


class ShardFormatError(ValueError):
    """A shard member that breaks the webdataset contract (name, contiguity, repeats, non-file)."""


# ---- the schema: kinds, image extensions, single-channel members -------------------------------------
@functools.cache
def schema_doc() -> dict[str, Any]:
    """data_specs/schemas.yaml as parsed YAML (`pipeline.schema` turns it into validators)."""
    return yaml.safe_load(SCHEMAS_FILE.read_text(encoding="utf-8"))


def image_extensions() -> tuple[str, ...]:
    """Member extensions an image may have (``jpg``, ``jpeg``, ``png``, ``webp``)."""
    return tuple(schema_doc()["image_extensions"])


def sample_kinds() -> tuple[str, ...]:
    """Every sample kind of the schema (edit_pair, seg_labelmap, referring_mask, ...)."""
    return tuple(schema_doc()["kinds"])


def mask_members() -> tuple[str, ...]:
    """Single-channel 8-bit PNG members of any kind (``mask.png``, ``ignore.png``, ``seg.png``)."""
    names: set[str] = set()
    for spec in schema_doc()["kinds"].values():
        members = spec.get("members") or {}
        for m in [*members.get("required", ()), *members.get("optional", ())]:
            if m.endswith(".png"):
                names.add(m)
    return tuple(sorted(names))


IMAGE_EXTENSIONS: tuple[str, ...] = image_extensions()
SAMPLE_KINDS: tuple[str, ...] = sample_kinds()
MASK_MEMBERS: tuple[str, ...] = mask_members()


def is_image_member(name: str) -> bool:
    """``jpg``, ``src.png``, ``tgt.webp`` … (not the single-channel masks)."""
    return name not in MASK_MEMBERS and name.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


def image_member(members: dict[str, Any], prefix: str = "") -> str | None:
    """The name of the image member with ``prefix`` (``""``, ``"src."``, ``"tgt."``), or None."""
    return next((prefix + ext for ext in IMAGE_EXTENSIONS if prefix + ext in members), None)


# ---- manifests ---------------------------------------------------------------------------------------
def index_path(path: Path | str) -> Path:
    """Accept a dataset directory or its ``shardindex.json`` (local, ``file://`` or an object-storage URL)."""
    path = as_path(path)
    if is_remote(path):  # a bucket has no directories to ask: anything not naming a .json is a dataset prefix
        return path if path.name.endswith(".json") else path / INDEX_NAME
    return path / INDEX_NAME if path.is_dir() else path


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url:
        raise ManifestError(f"{where}: field 'url' is {url!r}; expected a shard file name")
    if os.path.isabs(url) or "\\" in url or any(part in ("", ".", "..") for part in url.split("/")):
        raise ManifestError(f"{where}: field 'url' {url!r} points outside the dataset directory; "
                            "shard urls are file names relative to the shardindex.json")
    return url


def check_manifest(index: Any, path: Path | str) -> dict[str, Any]:
    """Raise `ManifestError` (one line naming the file and the field) unless ``index`` is a well-formed index."""
    if not isinstance(index, dict):
        raise ManifestError(f"{path}: expected a JSON object (a wids shard index), got {type(index).__name__}")
    if index.get("__kind__") != WIDS_KIND:
        raise ManifestError(f"{path}: field '__kind__' is {index.get('__kind__')!r}, expected {WIDS_KIND!r}")
    shardlist = index.get("shardlist")
    if not isinstance(shardlist, list):
        raise ManifestError(f"{path}: field 'shardlist' is {type(shardlist).__name__}, expected a list of shards")
    for i, entry in enumerate(shardlist):
        where = f"{path}: shardlist[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} is {type(entry).__name__}, expected an object with url, nsamples, filesize, md5sum")
        _check_url(entry.get("url"), where)
        for name, typ in (("nsamples", int), ("filesize", int), ("md5sum", str)):
            value = entry.get(name)
            if not isinstance(value, typ) or isinstance(value, bool) or (typ is int and value < 0):
                raise ManifestError(f"{where}: field {name!r} is {value!r}; expected a {'non-negative int' if typ is int else 'string'}")
    counts = index.get("counts")
    if counts is not None:
        if not isinstance(counts, dict):
            raise ManifestError(f"{path}: field 'counts' is {type(counts).__name__}, expected an object")
        for name in ("in", "kept", "rejected"):
            if name in counts and not isinstance(counts[name], int):
                raise ManifestError(f"{path}: field 'counts.{name}' is {counts.get(name)!r}; expected an int")
    return index


def load_manifest(path: Path | str) -> dict[str, Any]:
    """Read and check a dataset's index; one-line `ManifestError` / `FileNotFoundError` naming the file."""
    path = index_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {INDEX_NAME}; is this a dataset directory written by smartedit?")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON ({err}); rerun the conversion to rewrite it") from None
    return check_manifest(index, path)


def find_manifests(root: Path | str) -> list[Path]:
    """Every ``shardindex.json`` at or below ``root``, sorted."""
    root = as_path(root)
    if root.is_file():
        return [root]
    if is_remote(root):
        return sorted((root / key for key in _remote_find(root, INDEX_NAME)), key=str)
    return sorted(root.rglob(INDEX_NAME))


def _remote_find(root, name: str) -> list[str]:
    # one recursive listing (fsspec's find) instead of a walk of prefixes; keys relative to root
    base = root.path.rstrip("/") + "/"
    return [key[len(base):] for key in root.fs.find(root.path) if key.rsplit("/", 1)[-1] == name]


def shard_paths(path: Path | str) -> list[Path]:
    """The shard files of a dataset in index order (urls are checked to stay inside the dataset)."""
    index_file = index_path(path)
    index = load_manifest(index_file)
    return [index_file.parent / entry["url"] for entry in index["shardlist"]]


@dataclass(frozen=True)
class DatasetInfo:
    """What a manifest says about its dataset, without opening a shard."""

    index_path: str
    name: str
    source: str
    nsamples: int
    kinds: dict[str, int]


def dataset_info(path: Path | str) -> DatasetInfo:
    """Name, source, sample count and kinds of one dataset (dataset directory or its shardindex.json)."""
    index_file = index_path(path)
    index = load_manifest(index_file)
    counts = index.get("counts") or {}
    source = (index.get("provenance") or {}).get("source")
    if not source:
        sources = list(counts.get("sources") or {})
        if len(sources) != 1:
            raise ManifestError(f"{index_file}: no provenance.source and counts.sources is {sources}; "
                                "cannot tell which source this is")
        source = sources[0]
    return DatasetInfo(str(index_file if is_remote(index_file) else index_file.resolve()), str(index.get("name", index_file.parent.name)), str(source),
                       sum(int(e["nsamples"]) for e in index["shardlist"]), dict(counts.get("kinds") or {}))


# ---- reading samples back -----------------------------------------------------------------------------
def split_member_name(name: str) -> tuple[str, str]:
    """``key.ext`` → (key, ext) by the first dot, as webdataset splits; `ShardFormatError` if unsafe."""
    key, dot, ext = name.partition(".")
    if not dot or not _KEY.match(key) or not _EXT.match(ext):
        raise ShardFormatError(f"member {name!r} is not 'key.ext' with a plain key (letters, digits, _ and -) "
                               "and a plain extension (no '/', no '..')")
    return key, ext


def iter_tar_samples(path: Path | str, on_problem: Callable[[str], None] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one shard in file order: ``{"__key__", "__url__", ext: bytes, ...}``.

    Members of a sample must be contiguous, regular files, named ``key.ext``, with no repeated ext.
    Each violation is passed to ``on_problem`` (and the member skipped), or raises `ShardFormatError`
    when no callback is given. Tar-level damage raises ``tarfile.TarError`` / ``OSError``.
    """
    path = as_path(path)

    def problem(message: str) -> None:
        if on_problem is None:
            raise ShardFormatError(f"{path}: {message}")
        on_problem(f"{path.name}: {message}")

    current: dict[str, Any] | None = None
    finished: set[str] = set()
    with contextlib.ExitStack() as stack:
        if is_remote(path):  # object storage: one streamed read of the object (tarfile's "r|" never seeks)
            tar = stack.enter_context(tarfile.open(fileobj=stack.enter_context(path.open("rb")), mode="r|"))
        else:
            tar = stack.enter_context(tarfile.open(path, mode="r:"))
        for member in tar:
            if not member.isfile():
                problem(f"member {member.name!r} is not a regular file")
                continue
            try:
                key, ext = split_member_name(member.name)
            except ShardFormatError as err:
                problem(str(err))
                continue
            data = tar.extractfile(member).read()
            if current is None or current["__key__"] != key:
                if current is not None:
                    finished.add(current["__key__"])
                    yield current
                if key in finished:
                    problem(f"members of sample {key!r} are not contiguous")
                current = {"__key__": key, "__url__": str(path)}
            if ext in current:
                problem(f"sample {key!r} repeats member {ext!r}")
            current[ext] = data
    if current is not None:
        yield current


def iter_samples(path: Path | str) -> Iterator[dict[str, Any]]:
    """Raw samples of a dataset directory / shardindex.json (index order), a ``.tar``, or a folder of tars."""
    path = as_path(path)
    if path.name.endswith(SHARD_SUFFIX) and path.is_file():
        shards = [path]
    elif index_path(path).is_file():
        shards = shard_paths(path)
    elif path.is_dir() and (shards := sorted(path.glob(f"*{SHARD_SUFFIX}"))):
        pass
    else:
        raise FileNotFoundError(f"{path}: no .tar shard, {INDEX_NAME} or folder of .tar shards")
    for shard in shards:
        yield from iter_tar_samples(shard)


def open_indexed(path: Path | str):
    """Random access by sample index over a dataset (``wids.ShardListDataset``; members stay bytes)."""
    import wids

    index = index_path(path)
    if is_remote(index):
        # wids resolves the shard urls against the index URL and downloads each shard once into its cache
        # (WIDS_CACHE); its own downloaders call cloud CLIs, so fetch through fsspec instead.
        _register_fsspec_downloads(index.protocol)
        return wids.ShardListDataset(str(index), transformations=[lambda s: s])
    # localname=identity: read local shards in place (wids otherwise copies them into a cache directory).
    return wids.ShardListDataset(str(index), localname=lambda url: url, transformations=[lambda s: s])


def _fsspec_download(remote: str, local: str) -> None:
    import fsspec

    fs, key = fsspec.core.url_to_fs(remote)
    fs.get_file(key, local)


def _register_fsspec_downloads(protocol: str | tuple[str, ...]) -> None:
    """Have wids fetch ``protocol`` URLs through fsspec (credentials from the environment), not `aws s3 cp`."""
    from wids import wids_dl

    for scheme in (protocol,) if isinstance(protocol, str) else protocol:
        wids_dl.default_cmds[scheme] = _fsspec_download


# ---- decoding members ---------------------------------------------------------------------------------
def decode_image(data: bytes, name: str = "image"):
    """Image bytes → RGB `PIL.Image` as displayed (EXIF orientation applied; see the module docstring)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def decode_mask(data: bytes, name: str = "mask.png"):
    """A single-channel PNG member → (H, W) uint8 array; `ValueError` naming the member otherwise."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format != "PNG" or img.mode not in ("L", "P"):
            raise ValueError(f"member {name} must be an 8-bit single-channel PNG, got {img.format} {img.mode}")
        return np.array(img)


def decode_member(name: str, data: bytes) -> Any:
    """Decode one member by its name: json → dict, mask members → uint8 array, images → RGB PIL, else bytes."""
    if name == "json":
        return json.loads(data)
    if name in MASK_MEMBERS:
        return decode_mask(data, name)
    if is_image_member(name):
        return decode_image(data, name)
    return data


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw sample (members as bytes or file objects, names with or without wids' leading dot) → decoded members.

    Raises ``ValueError`` naming the sample key and the member when one does not decode.
    """
    key = raw.get("__key__", "?")
    out: dict[str, Any] = {"__key__": key}
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        ext = name.lstrip(".")
        data = value.read() if hasattr(value, "read") else value
        try:
            out[ext] = decode_member(ext, data)
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"sample {key}: member {ext} does not decode ({err})") from None
    if "json" not in out:
        raise ValueError(f"sample {key}: no json member")
    return out
