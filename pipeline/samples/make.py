"""`make_samples`: write every sample dataset under one directory, deterministically from a seed."""

from __future__ import annotations

import logging
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import coco, cocostuff, grefcoco, instructpix2pix, llava, magicbrush, reason_edit, reasonseg, refer
from pipeline.samples.quirks import write_json
from pipeline.samples.sampleset import LAYOUT, SampleSet

log = logging.getLogger(__name__)
GENERATOR_VERSION = 1


def _rng(seed: int, stream: str) -> np.random.Generator:
    """An independent generator per dataset, so changing one dataset's draws leaves the others' bytes alone."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _prepare(root: Path) -> None:
    """Create root, or clear a previous sample set there (stale files of another seed would mix in).

    A non-empty directory that is not a sample set is refused rather than written into.
    """
    root.mkdir(parents=True, exist_ok=True)
    if (root / "samples.json").is_file():
        tops = {rel.split("/")[0] for rel in LAYOUT.values()} | {"instructpix2pix"}
        for name in sorted(tops):
            if (root / name).is_dir():
                shutil.rmtree(root / name)
        for name in ("samples.json", "scenes.json"):
            (root / name).unlink(missing_ok=True)
    elif any(root.iterdir()):
        raise ValueError(f"{root}: not empty and holds no samples.json; give a new or empty directory for the samples")


def coco_images(seed: int = 0) -> list[coco.CocoImage]:
    """The COCO sample images (scene plans with their renders) that `make_samples(…, seed)` writes."""
    return coco.build_images(_rng(seed, "coco"))


def make_samples(out_dir: str | Path, seed: int = 0) -> SampleSet:
    """Write all sample datasets under out_dir (see pipeline.samples); same seed → byte-identical files."""
    root = Path(out_dir)
    _prepare(root)
    samples = SampleSet.at(root, seed=seed)
    counts: dict[str, dict[str, int]] = {}
    quirks: dict[str, Any] = {}
    truths: list[dict[str, Any]] = []

    images = coco_images(seed)
    result = coco.write(samples.coco, images)
    counts.update(result["counts"])
    quirks.update(result["quirks"])
    truths += [coco.truth(i) for i in images]
    counts.update(cocostuff.write(samples.cocostuff, images))
    result = refer.write(samples.refer, images, _rng(seed, "refer"))
    counts.update(result["counts"])
    sentences = result["sentences"]
    result = grefcoco.write(samples.grefcoco, images, _rng(seed, "grefcoco"))
    counts.update(result["counts"])
    quirks["grefcoco_kinds"] = result["grefcoco_kinds"]
    counts.update(llava.write(samples.llava, images, _rng(seed, "llava"))["counts"])
    for module, path, stream in ((reasonseg, samples.reasonseg, "reasonseg"),
                                 (instructpix2pix, root / "instructpix2pix", "instructpix2pix"),
                                 (magicbrush, samples.magicbrush, "magicbrush"),
                                 (reason_edit, samples.reason_edit, "reason_edit")):
        result = module.write(path, _rng(seed, stream))
        counts.update(result["counts"])
        quirks.update(result.get("quirks", {}))
        truths += result["truths"]

    samples.counts, samples.sentences, samples.quirks = counts, sentences, quirks
    write_json(samples.scenes_json, truths, indent=1)
    write_json(samples.samples_json, {
        "generator_version": GENERATOR_VERSION, "seed": seed, "layout": LAYOUT, "counts": counts,
        "sentences": sentences, "quirks": quirks,
    }, indent=1)
    log.info("sample datasets written under %s: %d sources", root, len(counts))
    return samples
