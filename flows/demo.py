"""The `make demo` chain on the bundled sample data, every step through a deployment run.

    make demo        # = python -m flows.stack demo

Steps: write the sample data in official layouts → convert-segmentation, convert-vqa, convert-edit →
verify every manifest. Later steps (build-synthetic, train, evaluate) run when their deployments exist.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("smartedit.demo")
Runner = Callable[[str, dict], dict]


def sample_sources(samples: Path) -> dict[str, list[dict]]:
    """Each convert flow's `sources` parameter for the layout that pipeline.samples writes (samples.json)."""
    coco_train = str(samples / "coco" / "train2017")
    refer = [{"source": name, "root": str(samples / "refer"), "options": {"images": coco_train}}
             for name in ("refcoco", "refcoco+", "refcocog", "grefcoco")]
    return {
        "segmentation": [
            {"source": "cocostuff", "root": str(samples / "cocostuff"), "options": {"images": str(samples / "coco")}},
            *refer,
            {"source": "reasonseg", "root": str(samples / "ReasonSeg")},
        ],
        "vqa": [{"source": "llava-instruct", "root": str(samples / "llava"), "options": {"images": coco_train}}],
        "edit": [
            {"source": "instructpix2pix", "root": str(samples / "instructpix2pix" / "folder")},
            {"source": "magicbrush", "root": str(samples / "magicbrush")},
        ],
    }


def convert_parameters(samples: Path, shards: Path) -> dict[str, dict]:
    """Parameters of the three convert-* deployments for the sample data."""
    common = {"output": str(shards), "shard_size": 16, "workers": 2}
    return {f"convert-{group}/convert-{group}": {"sources": sources, **common}
            for group, sources in sample_sources(samples).items()}


def synthetic_parameters(samples: Path) -> dict:
    """build-synthetic's settings for the demo; the retrain step reuses them (a finished build is then kept)."""
    return {"eval_sets": [str(samples / "reason_edit")], "shard_size": 16}


def retrain_parameters(demo_dir: Path) -> dict:
    """The scheduled-retrain deployment's parameters for the demo: the `demo` profile
    (data_specs/profiles/demo.yaml: every sample source, the synthetic build, tiny preset, few steps)."""
    return {"profile": "demo"}


def mgie_parameters(demo_dir: Path) -> tuple[dict, dict]:
    """The train (model=mgie) and evaluate deployments' parameters: MGIE on the edit-pair shards, tiny preset."""
    shards, run_dir = demo_dir / "shards", demo_dir / "runs" / "mgie"
    train = {"model": "mgie", "preset": "tiny", "steps": 4, "allow_missing_sources": True, "resume": None,
             "manifests": [str(shards / "instructpix2pix"), str(shards / "magicbrush")], "output_dir": str(run_dir)}
    evaluate = {"pipeline_dir": str(run_dir / "pipeline"), "benchmark": str(demo_dir / "samples" / "reason_edit"),
                "out_dir": str(run_dir / "eval"), "num_inference_steps": 4}
    return train, evaluate


def run_demo(demo_dir: Path, run: Runner, wait_for_triggered: Callable[[str, float], str | None] | None = None) -> None:
    """samples → convert-* → build-synthetic (its `shards.built` event triggers `train`) → scheduled-retrain
    (convert what changed, train from the champion, evaluate, promote) → MGIE on the same edit shards (train,
    evaluate) → print the evaluation table comparing both."""
    import json

    from pipeline.manifest import find_manifests
    from pipeline.samples import make_samples
    from pipeline.verify import verify_dataset

    samples, shards = demo_dir / "samples", demo_dir / "shards"
    make_samples(samples, seed=0)
    log.info(f"sample data (official layouts): {samples}")
    for deployment, parameters in convert_parameters(samples, shards).items():
        run(deployment, {**parameters, "announce": False})

    # A build that changes nothing announces nothing (so reruns never retrain on the same data). The demo
    # shows the trigger every time: it builds its synthetic pairs afresh, and the `shards.built` event starts
    # `train` in a new run directory (runs/triggered/<event id>) that trains real steps.
    synthetic = shards / "synthetic"
    if synthetic.exists():
        log.info(f"removing the previous synthetic build {synthetic} (the demo rebuilds it to show the trigger)")
        shutil.rmtree(synthetic)
    started = run("build-synthetic/build-synthetic",
                  {"input": str(samples), "output": str(synthetic), "config": synthetic_parameters(samples)})
    if wait_for_triggered is not None:
        state = wait_for_triggered("train/train", started["started"])
        log.info(f"train/train (triggered by shards.built from build-synthetic): {state or 'not seen'}")
        if state != "Completed":
            raise RuntimeError(f"the triggered train run ended {state or 'never started'}; "
                               "see `prefect flow-run ls --flow-name train` and its logs")

    manifests = find_manifests(shards)
    bad = [m for m in manifests if not verify_dataset(m).ok]
    if bad:
        raise RuntimeError(f"verify failed for {bad}; run `smartedit shards verify {shards}` for details")
    log.info(f"\nshards and manifests ({len(manifests)} datasets, all verified): {shards}")
    log.info(f"  inspect: .venv/bin/smartedit shards inspect {shards}")
    log.info(f"  contact sheet and data card: {shards / 'synthetic'}")

    result = run("retrain/scheduled-retrain", retrain_parameters(demo_dir))
    registry = json.loads((demo_dir / "registry.json").read_text())
    last = registry["history"][-1]
    log.info(f"\nchampion registry: {demo_dir / 'registry.json'} "
          f"(last decision: {'promoted' if last['decision']['promote'] else 'kept champion'})")
    report = Path(last["pipeline"]).parents[1] / "eval" / "report.md"
    log.info(f"pipeline: {last['pipeline']}\n  try: .venv/bin/smartedit edit --model {last['pipeline']} "
          f"--image {samples / 'reason_edit' / '1-Left-Right' / '001.png'} --instruction 'Remove the left object' -o edited.png")
    log.info(f"\nevaluation report: {report}\n")
    log.info(report.read_text() if report.exists() else f"(no report at {report}: {result})")

    # MGIE, the other model, on the same edit shards; one table compares both beside the papers' numbers.
    from model.mgie.comparison import write_comparison

    mgie_train, mgie_evaluate = mgie_parameters(demo_dir)
    run("train/train", mgie_train)
    run("evaluate/evaluate", mgie_evaluate)
    comparison = write_comparison({"SmartEdit": report.with_suffix(".json"),
                                   "MGIE": Path(mgie_evaluate["out_dir"]) / "report.json"}, demo_dir / "comparison.md")
    log.info(f"\nSmartEdit vs MGIE: {comparison}\n")
    log.info(comparison.read_text())
