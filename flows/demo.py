"""The `make demo` chain on the bundled sample data, every step through a deployment run.

    make demo        # = python -m flows.stack demo

Steps: write the sample data in official layouts → convert-segmentation, convert-vqa, convert-edit →
verify every manifest. Later steps (build-synthetic, train, evaluate) run when their deployments exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Runner = Callable[[str, dict], dict]


def convert_parameters(samples: Path, shards: Path) -> dict[str, dict]:
    """Parameters of the three convert-* deployments for the sample data layout of pipeline.samples."""
    s = str(samples)
    segmentation = [
        {"source": "cocostuff", "root": s},
        {"source": "refcoco", "root": s},
        {"source": "refcoco+", "root": s},
        {"source": "refcocog", "root": s},
        {"source": "grefcoco", "root": s},
        {"source": "reasonseg", "root": s},
    ]
    common = {"output": str(shards), "shard_size": 16, "workers": 2}
    return {
        "convert-segmentation/convert-segmentation": {"sources": segmentation, **common},
        "convert-vqa/convert-vqa": {"sources": [{"source": "llava-instruct", "root": s}], **common},
        "convert-edit/convert-edit": {
            "sources": [{"source": "instructpix2pix", "root": s}, {"source": "magicbrush", "root": s}], **common},
    }


def run_demo(demo_dir: Path, run: Runner) -> None:
    from pipeline.manifest import find_manifests
    from pipeline.samples import make_samples
    from pipeline.verify import verify_dataset

    samples, shards = demo_dir / "samples", demo_dir / "shards"
    make_samples(samples, seed=0)
    print(f"sample data (official layouts): {samples}")
    for deployment, parameters in convert_parameters(samples, shards).items():
        run(deployment, parameters)
    manifests = find_manifests(shards)
    bad = [m for m in manifests if not verify_dataset(m).ok]
    if bad:
        raise RuntimeError(f"verify failed for {bad}; run `smartedit shards verify {shards}` for details")
    print(f"\nshards and manifests ({len(manifests)} datasets, all verified): {shards}")
    print(f"  inspect: .venv/bin/smartedit shards inspect {shards}")
    print(f"  verify:  .venv/bin/smartedit shards verify {shards}")
