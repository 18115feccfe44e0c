"""Reading shards back, for users: decode each member by what the schema says it is.

Every member of our shards is a PNG or JPEG, so a generic decoder cannot tell images from masks:
webdataset's ``decode("pil")`` turns masks and label maps RGB (their values are lost) and ``decode("l")``
turns source/target images grey. `decode_sample` (the shard contract's, `pipeline.shards`) decodes the
members data_specs/schemas.yaml declares as masks (``mask.png``, ``seg.png``, ``ignore.png``) to
single-channel ``(H, W) uint8`` arrays with their values unchanged, every other image member
(``png``, ``jpg``, ``src.png``, ``tgt.png``) to an RGB PIL image, ``json`` to a dict. It takes webdataset
samples (members as bytes) and wids items (``.ext`` keys, file objects) alike.

    import webdataset as wds
    from pipeline.reading import decode_sample, shard_urls

    for sample in wds.WebDataset(shard_urls("shards/magicbrush/train"), shardshuffle=False).map(decode_sample):
        sample["src.png"], sample["mask.png"], sample["json"]["instruction"]   # RGB image, (H, W) uint8, str

This module adds only what a reader needs beside the contract: shard paths as webdataset urls, and
the two readers set up with the decoder.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.shards import decode_member, decode_sample, index_path, iter_samples, shard_paths

__all__ = ["decode_member", "decode_sample", "iter_samples", "shard_urls", "webdataset_reader", "wids_reader"]


def shard_urls(dataset: Path | str) -> list[str]:
    """The shard files of a dataset (its directory or shardindex.json), in manifest order, as local paths."""
    return [str(p) for p in shard_paths(dataset)]


def webdataset_reader(dataset: Path | str):
    """A `webdataset.WebDataset` over the dataset's shards in order, yielding decoded samples."""
    import webdataset as wds

    return wds.WebDataset(shard_urls(dataset), shardshuffle=False).map(decode_sample)


def wids_reader(dataset: Path | str):
    """A `wids.ShardListDataset` (random access by index) over the dataset, reading local shards in place."""
    import wids

    return wids.ShardListDataset(str(index_path(dataset)), localname=lambda url: url, transformations=[decode_sample])
