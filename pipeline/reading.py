"""Reading shards back: a decoder that knows each kind's members (data_specs/schemas.yaml).

Every member of our shards is a PNG or JPEG, so a generic decoder cannot tell images from masks:
webdataset's ``decode("pil")`` turns every PNG into RGB (masks and label maps lose their values) and
``decode("l")`` would turn source/target images grey. Here the sample's own ``json.kind`` picks the
schema: members the schema declares as images (``image``, ``src.image``, ``tgt.image``) decode to RGB
PIL images; every other PNG member (``mask.png``, ``seg.png``, ``ignore.png``) to a single-channel
PIL image (mode ``L``) with its stored values unchanged; ``json`` to a dict.

    import webdataset as wds
    from pipeline.reading import decode_sample, shard_urls

    for sample in wds.WebDataset(shard_urls("shards/magicbrush/train"), shardshuffle=False).map(decode_sample):
        sample["src.png"], sample["mask.png"], sample["json"]["instruction"]   # RGB, L, str

The same function decodes a ``wids.ShardListDataset`` item (members as file objects).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.manifest import index_path, load_manifest
from pipeline.schema import load_schemas


class DecodeError(ValueError):
    """A member that cannot be decoded as its kind declares (the message names the sample and the member)."""


def _bytes(value: Any) -> bytes:
    if hasattr(value, "read"):
        if hasattr(value, "seek"):
            value.seek(0)
        return value.read()
    return value


def image_members(kind: str) -> frozenset[str]:
    """The member names ``kind`` declares as images (decoded RGB), expanded over the image extensions."""
    schemas = load_schemas()
    if kind not in schemas:
        raise DecodeError(f"json.kind {kind!r} is not in data_specs/schemas.yaml; known kinds: {sorted(schemas)}")
    schema = schemas[kind]
    return frozenset(m for member in schema.required + schema.optional for m in schema._expand(member)
                     if member == "image" or member.endswith(".image"))


def decode_member(name: str, data: bytes, kind: str) -> Any:
    """One member by its kind: images → RGB, other PNGs → single-channel (values kept), json → dict."""
    if name == "json":
        return json.loads(data)
    if name in image_members(kind):
        return Image.open(io.BytesIO(data)).convert("RGB")
    if name.endswith(".png"):
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.mode in ("L", "P", "1", "I", "I;16"):
            # P: a palette PNG's indices are the label values; converting through the palette would change them.
            return image if image.mode == "L" else Image.fromarray(np.asarray(image).astype(np.uint8))
        raise DecodeError(f"member {name} is a {image.mode} PNG; masks and label maps must be single-channel")
    return data


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw sample (webdataset: ``{'__key__', 'json': bytes, 'src.png': bytes, ...}``; wids: ``'.json'`` keys
    with file objects) → the same keys without leading dots, each member decoded by the sample's kind."""
    raw = {name.lstrip("."): value for name, value in sample.items()}
    key = raw.get("__key__", "?")
    if "json" not in raw:
        raise DecodeError(f"sample {key}: no json member (is this a SmartEdit shard?)")
    meta = json.loads(_bytes(raw["json"]))
    kind = meta.get("kind")
    out: dict[str, Any] = {"__key__": key, "json": meta}
    for name, value in raw.items():
        if name.startswith("__"):
            out[name] = value
            continue
        if name == "json":
            continue
        try:
            out[name] = decode_member(name, _bytes(value), kind)
        except DecodeError as err:
            raise DecodeError(f"sample {key}: {err}") from None
    return out


def shard_urls(dataset: Path | str) -> list[str]:
    """The shard files of a dataset (its directory or shardindex.json), in manifest order, as local paths."""
    path = index_path(dataset)
    return [str(path.parent / entry["url"]) for entry in load_manifest(path)["shardlist"]]
