"""The synthetic build, end to end, without Prefect (the flow and the CLI call these).

1. `plan_build`: the cheap stages (`plan_stages`) over the input images, in a seeded order, until every
   scenario's quota is met: leakage guard → scene analysis → scenario selection → operation and
   instructions. The jobs and the drops go to ``plan.json`` (written once; a rerun with the same
   parameters reuses it).
2. `build_shard`: shard i takes plan entries [i·shard_size, (i+1)·shard_size) through `shard_stages`
   (paraphrase → load → masks → mask area → editor → quality filters → encode), written by the shared
   atomic writer (skipped when its completion marker exists, so a killed build resumes where it stopped
   and gives the same bytes).
3. `finalize_build`: manifest (with per-stage yields), SmartEdit JSON export, contact sheet, data card.

``output`` is a local directory or an object-storage URL (``s3://bucket/synthetic``, through `pipeline.storage`):
every file of the build goes there with the writer's atomic rule. `build` (the CLI) holds the dataset lock
for the whole build; the flow holds it around its tasks.

Both pipelines are lists of `pipeline.synthetic.stages` stages; their names key the yields table.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.convert import ShardPlan, plan_shards
from pipeline.manifest import finalize_dataset
from pipeline.provenance import Provenance, spec_hash
from pipeline.records import Reject, Sample
from pipeline.synthetic.colour_naming import load_colour_table
from pipeline.synthetic.config import REASON_EDIT_FOLDERS, SCENARIOS, SyntheticConfig
from pipeline.synthetic.editors import ApplyEdits, InpaintEditor, LabEditor
from pipeline.synthetic.filters import quality_filters
from pipeline.synthetic.instructions import EditJob, PlanEdits, load_templates
from pipeline.synthetic.knowledge import load_knowledge
from pipeline.synthetic.leakage import EvalHashes, LeakageGuard, load_eval_hashes
from pipeline.synthetic.mask_area import MaskAreaFilter
from pipeline.synthetic.masks import RefineMasks, SamMasker, load_sam
from pipeline.synthetic.pair import EditPair, LoadPairs
from pipeline.synthetic.paraphrase import AddParaphrases, LlmParaphraser
from pipeline.synthetic.scenarios import Quota, ScenarioSelection, scenario_rng
from pipeline.synthetic.scene import CocoIndex, CocoSplit, SceneAnalysis, load_index, resolve_inputs
from pipeline.synthetic.verify import EditVerifier, VerifyEdits
from pipeline.synthetic.stages import MapStage, Stage, StageStats, run_stages, stage_names
from pipeline.shards import INDEX_NAME
from pipeline.synthetic.shard_scenes import (ensure_local_scenes, is_shard_input, materialise_remote_scenes,
                                             materialise_shard_scenes)
from pipeline.storage import as_path, is_remote, is_url
from pipeline.writer import atomic_write_text, remove_stale_temporaries, write_shard

log = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
SHARD_SCENES_DIR = "input_scenes"  # shard input written out as COCO files (see shard_scenes.py)
DATASET_NAME = "synthetic"
NEGATIVES_DIR = "negatives"  # failed candidates, labelled with the verifier's reason (own shards and manifest)


class BuildInputs(BaseModel):
    """Where the scenes come from.

    input: a sample-data directory (``coco/annotations/instances_*.json`` + ``scenes.json``), a COCO
    annotation JSON (+ ``images``, its image folder), or converted referring shards: a dataset
    directory / its ``shardindex.json`` (``smartedit convert refcoco --out O`` → ``O/refcoco/train``) or a
    directory of them (``O``), detected by the ``shardindex.json`` (see `pipeline.synthetic.shard_scenes`).
    images: COCO input only (shards carry their images). splits: COCO split names (``train2017``) or,
    for shards, the json ``split`` of the refs to use (``train``). scenes: a ground-truth ``scenes.json``
    (per image ``file_name`` and ``mirrors: [{bbox}]``) giving mirror regions; default: the sample-data
    directory's own. Shards carry no mirrors, so without it a reflection counts as an object.
    """

    model_config = ConfigDict(extra="forbid")
    input: str
    images: str | None = None
    splits: list[str] = Field(default_factory=list)
    scenes: str | None = None
    stuff: str | None = None
    """COCO-Stuff root (``stuffthingmaps_trainval2017/<split>/*.png``, ``labels.txt``): its mirror-stuff regions
    are mirrors (real COCO has no mirror annotations)."""


def build_spec(cfg: SyntheticConfig, inputs: BuildInputs) -> dict[str, Any]:
    # Unset `scenes` / `stuff` stay out of the spec so builds planned before the fields existed keep their hash.
    unset = {k for k in ("scenes", "stuff") if getattr(inputs, k) is None} or None
    return {"config": cfg.model_dump(mode="json"), "inputs": inputs.model_dump(mode="json", exclude=unset)}


def plan_path(output: Path | str):
    return as_path(output) / PLAN_NAME


def scene_sources(inputs: BuildInputs, output) -> tuple[list[CocoSplit], Path | None, dict[str, Any] | None]:
    """The COCO splits to analyse, the ground-truth scenes.json (if any) and, for shard input, its counts.

    Converted shards are written out once as COCO files under ``output/SHARD_SCENES_DIR`` (the shard
    stages reload masks and pixels from there by path, in any worker). For an output on a bucket they are
    written to a local cache directory instead and uploaded (see `pipeline.synthetic.shard_scenes`).
    """
    explicit = Path(inputs.scenes) if inputs.scenes else None
    if explicit is not None and not explicit.is_file():
        raise FileNotFoundError(f"scenes: {explicit} not found; pass a scenes.json with per-image mirrors or leave it out")
    if not is_shard_input(inputs.input):
        if is_url(inputs.input):
            raise FileNotFoundError(f"input: {inputs.input} holds no {INDEX_NAME}; only converted shards are read "
                                    "from a bucket (COCO annotations and images must be a local directory)")
        splits, scenes = resolve_inputs(inputs.input, inputs.images, inputs.splits)
        return splits, explicit or scenes, None
    if inputs.images:
        raise ValueError(f"images: {inputs.images!r} given, but input {inputs.input} is converted shards, which "
                         "carry their images; drop images (--images)")
    if is_remote(output):
        splits, counts = materialise_remote_scenes(inputs.input, output / SHARD_SCENES_DIR, inputs.splits)
    else:
        splits, counts = materialise_shard_scenes(inputs.input, output / SHARD_SCENES_DIR, inputs.splits)
    return splits, explicit, counts


def plan_stages(cfg: SyntheticConfig, indexes: dict[str, CocoIndex], hashes: EvalHashes, quota: Quota,
                stuff: str | None = None) -> list[Stage]:
    """The planning pipeline: cheap stages over image records, in order."""
    knowledge, colours, templates = load_knowledge(), load_colour_table(), load_templates()
    return [
        LeakageGuard(hashes, cfg.phash_max_distance),
        SceneAnalysis(indexes, colours, cfg.colour_min_share, stuff),
        ScenarioSelection(cfg, knowledge, quota),
        PlanEdits(cfg, knowledge, colours, templates),
    ]


def plan_build(cfg: SyntheticConfig, inputs: BuildInputs, output: Path | str) -> dict[str, Any]:
    """Write (or reuse) ``output/plan.json``: the ordered jobs and planning drops; returns it."""
    output = as_path(output)
    spec = build_spec(cfg, inputs)
    digest = spec_hash(spec)
    path = plan_path(output)
    if path.exists():
        plan = json.loads(path.read_text())
        if plan.get("spec_hash") != digest:
            raise ValueError(f"{path}: planned with other parameters (spec_hash {plan.get('spec_hash', '?')[:12]} "
                             f"≠ {digest[:12]}); use a new output directory or delete it to rebuild")
        return plan
    if cfg.leakage_guard and not cfg.eval_sets:
        raise ValueError("eval_sets: empty while leakage_guard is on; name the evaluation sets to keep out (Reason-Edit "
                         "directory, MagicBrush test directory or parquet: --eval-set DIR) or set leakage_guard=False")
    splits, scenes, shard_counts = scene_sources(inputs, output)
    mirror = tuple(cfg.mirror_categories)
    indexes = {str(s.annotations): load_index(str(s.annotations), str(s.images), s.split, mirror,
                                              str(scenes) if scenes else None) for s in splits}
    records = [r for index in indexes.values() for r in index.records()]
    order = scenario_rng(cfg.seed, "image-order").permutation(len(records))
    ordered = [records[i] for i in order]
    quota = Quota({s: int(cfg.scenarios.get(s, 0)) for s in SCENARIOS})

    yields: dict[str, StageStats] = {}
    stages = plan_stages(cfg, indexes, load_eval_hashes(tuple(cfg.eval_sets)), quota, inputs.stuff)
    items = run_stages(stages, ordered, yields)
    entries = [{"reject": it.to_json()} if isinstance(it, Reject) else {"job": it.to_json()} for it in items]
    notes = []
    mirror_sources = [n for n, on in (("scenes.json mirrors", scenes), ("COCO-Stuff mirror-stuff", inputs.stuff),
                                      (f"annotation categories {cfg.mirror_categories}", True)) if on]
    if cfg.scenarios.get("mirror", 0) and not (scenes or inputs.stuff):
        notes.append("mirror: no scenes.json and no COCO-Stuff maps (--stuff); COCO annotates no mirror, so only "
                     f"annotation categories {cfg.mirror_categories} can mark mirrors and reflections may pass for "
                     "ordinary objects")
    if cfg.scenarios.get("mirror", 0) and not quota.taken.get("mirror"):
        notes.append("mirror: no pair planned: no mirror region holding exactly one object of a category was found")
    plan = {
        "spec_hash": digest, "notes": notes, "mirror_sources": mirror_sources, "spec": spec, "scenes_json": str(scenes) if scenes else None,
        "sources": [str(s.annotations) for s in splits], "images_available": len(records),
        "entries": entries, "yields": yields, "stages": stage_names(stages), "planned_by_scenario": quota.taken,
    }
    if shard_counts is not None:
        plan["shard_input"] = shard_counts
    if not is_remote(output):
        output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=1, ensure_ascii=False))
    log.info("planned %d jobs (%s) from %d images", sum(quota.taken.values()), quota.taken,
             yields["leakage_guard"]["in"])
    return plan


def shard_plans(plan: dict[str, Any], cfg: SyntheticConfig) -> list[ShardPlan]:
    return plan_shards(DATASET_NAME, len(plan["entries"]), cfg.shard_size)


@dataclass
class Models:
    masker: SamMasker | None
    editor: LabEditor | InpaintEditor
    clip: Any
    paraphraser: LlmParaphraser | None
    detector: Any = None


@functools.lru_cache(maxsize=2)
def _load_models(models_json: str) -> Models:
    """One set of models per process and configuration (shard tasks in a worker reuse them)."""
    cfg = SyntheticConfig.model_validate_json(models_json)
    colours = load_colour_table()
    masker = None
    if cfg.sam_checkpoint:
        sam = load_sam(cfg.sam_type, cfg.sam_checkpoint, cfg.sam_arch, cfg.device)
        arch = "custom" if cfg.sam_arch else cfg.sam_type
        masker = SamMasker(sam, f"sam-{arch}:{Path(cfg.sam_checkpoint).name}")
    lab = LabEditor(colours, cfg.removal, cfg.remove_dilate_px, cfg.best_of, cfg.feather_px)
    if cfg.inpaint_dir:
        editor: LabEditor | InpaintEditor = InpaintEditor(
            cfg.inpaint_dir, colours, cfg.device, cfg.inpaint_resolution, cfg.inpaint_steps, cfg.guidance_scale,
            cfg.recolour_with, cfg.best_of, cfg.feather_px, cfg.batch_size, lab)
    else:
        editor = lab
    clip = None
    if cfg.clip_dir:
        from pipeline.synthetic.clip_direction import ClipDirection

        clip = ClipDirection(cfg.clip_dir, cfg.device)
    paraphraser = LlmParaphraser(cfg.llm_dir, cfg.device, cfg.llm_max_new_tokens) if cfg.llm_dir else None
    detector = None
    if cfg.detector_dir:
        from pipeline.synthetic.detector import OpenVocabDetector

        detector = OpenVocabDetector(cfg.detector_dir, cfg.device)
    return Models(masker, editor, clip, paraphraser, detector)


def load_models(cfg: SyntheticConfig) -> Models:
    return _load_models(cfg.model_dump_json())


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=1)  # 3x faster than 6 for ~10 % more bytes
    return buf.getvalue()


def pair_meta(pair: EditPair, cfg: SyntheticConfig, llm_id: str | None) -> dict[str, Any]:
    """The json member of a pair's sample (kept pairs and labelled negatives alike)."""
    job = pair.job
    return {
        "kind": "edit_pair", "source": "synthetic", "split": job.split,
        "source_id": f"{job.split}/{job.file_name}#{job.target['ann_id']}",
        "instruction": job.instructions[0], "instructions": list(job.instructions),
        "scenario": job.scenario, "reason_edit_category": REASON_EDIT_FOLDERS[job.scenario],
        "operation": job.operation, "referent": job.referent, "selector": job.selector, "target": job.target,
        "new_object": job.new_object, "new_colour": job.new_colour, "target_description": job.target_description,
        "prompt": job.prompt, "llm_paraphrases": list(job.paraphrased_by_llm),
        "seeds": {"build": cfg.seed, "pair": job.seed}, "mask_source": pair.mask_source,
        "models": {"editor": pair.models.get("editor"), "sam": pair.models.get("sam"),
                   "inpaint": pair.models.get("inpaint"), "clip": pair.models.get("clip"),
                   "llm": llm_id},
        "scores": pair.scores, "image_size": [job.width, job.height],
    }


def _pair_files(source: np.ndarray, target: np.ndarray, edit_mask: np.ndarray) -> dict[str, bytes]:
    return {"src.png": _png(source), "tgt.png": _png(target), "mask.png": _png(edit_mask.astype(np.uint8) * 255)}


class ToSamples(MapStage):
    """EditPair → edit_pair Sample (src.png, tgt.png, mask.png = the edit mask, json); counts kept pairs."""

    name = "encode"

    def __init__(self, cfg: SyntheticConfig, kept: dict[str, dict[str, int]], llm_id: str | None = None):
        self.cfg, self.kept, self.llm_id = cfg, kept, llm_id

    def map(self, pair: EditPair) -> Sample:
        job, kept = pair.job, self.kept
        kept["scenario"][job.scenario] = kept["scenario"].get(job.scenario, 0) + 1
        kept["operation"][job.operation] = kept["operation"].get(job.operation, 0) + 1
        return Sample(job.key, pair_meta(pair, self.cfg, self.llm_id), _pair_files(pair.source, pair.target, pair.edit_mask))


def negative_samples(negatives: list, cfg: SyntheticConfig, llm_id: str | None) -> Iterator[Sample]:
    """Failed candidates as labelled edit pairs (``negative: true`` and the verifier's reason): preference data."""
    counts: dict[str, int] = {}
    for pair, cand, reason, detail in negatives:
        n = counts[pair.job.key] = counts.get(pair.job.key, 0) + 1
        meta = pair_meta(pair, cfg, llm_id)
        meta.update(source="synthetic-negative", negative=True, reason=reason, detail=detail,
                    scores=cand.scores, candidate=cand.method + (f"-seed{cand.seed}" if cand.seed is not None else ""))
        yield Sample(f"{pair.job.key}-neg{n}", meta, _pair_files(pair.source, cand.target, cand.edit_mask))


def shard_stages(cfg: SyntheticConfig, models: Models, scenes_json: str | None,
                 kept: dict[str, dict[str, int]]) -> list[Stage]:
    """The per-shard pipeline over planned jobs, in order (its names key the yields table)."""
    return [
        AddParaphrases(models.paraphraser, load_templates()),
        LoadPairs(tuple(cfg.mirror_categories), scenes_json),
        RefineMasks(models.masker, cfg.sam_min_iou, cfg.dilate_px, cfg.remove_dilate_px, cfg.replace_mask == "box",
                    max(cfg.batch_size, 8)),
        MaskAreaFilter(cfg),
        ApplyEdits(models.editor, cfg.batch_size),
        VerifyEdits(EditVerifier(cfg, load_colour_table(), models.detector, models.clip) if cfg.verify else None),
        *quality_filters(cfg, models.clip),
        ToSamples(cfg, kept, models.paraphraser.model_id if models.paraphraser else None),
    ]


def build_shard(cfg: SyntheticConfig, output: Path | str, shard_index: int) -> dict[str, Any]:
    """Write planned shard ``shard_index`` (skipped when complete); returns a small summary."""
    output = as_path(output)
    plan = json.loads(plan_path(output).read_text())
    shard = shard_plans(plan, cfg)[shard_index]
    yields: dict[str, StageStats] = {}
    kept: dict[str, dict[str, int]] = {"scenario": {}, "operation": {}}
    # The writer serialises `extra` after consuming the items, so the counters filled meanwhile are recorded.
    extra: dict[str, Any] = {"yields": yields, "kept_by_scenario": kept["scenario"], "kept_by_operation": kept["operation"]}

    def items() -> Iterator[Sample | Reject]:
        models = load_models(cfg)  # runs only when the shard is not already complete
        if is_remote(output) and "shard_input" in plan:  # a worker on another machine: fetch the scenes once
            ensure_local_scenes(plan["sources"], output / SHARD_SCENES_DIR)
        entries = plan["entries"][shard.start:shard.stop]
        jobs = (Reject(**e["reject"]) if "reject" in e else EditJob.from_json(e["job"]) for e in entries)
        stages = shard_stages(cfg, models, plan.get("scenes_json"), kept)
        extra["stages"] = stage_names(stages)  # JSON keys are sorted on disk: the order is kept here
        yield from run_stages(stages, jobs, yields)
        # Written before this shard's completion marker, so a rerun never finds the shard done and its
        # negatives missing.
        verify = next(s for s in stages if isinstance(s, VerifyEdits))
        llm_id = models.paraphraser.model_id if models.paraphraser else None
        neg = write_shard(output / NEGATIVES_DIR / shard.name, negative_samples(verify.negatives, cfg, llm_id))
        extra["negatives"] = neg.nsamples

    stats = write_shard(output / shard.name, items(), extra=extra)
    return {"shard": stats.url, "nsamples": stats.nsamples, "rejected": stats.n_rejected, "sha256": stats.sha256}


def finalize_build(cfg: SyntheticConfig, output: Path | str, *, sheet_pairs: int = 16,
                   export: bool = True) -> dict[str, Any]:
    """Manifest with yields, SmartEdit JSON export, contact sheet and data card; returns paths and counts."""
    from pipeline.synthetic.contact_sheet import contact_sheet
    from pipeline.synthetic.data_card import merge_yields, refresh_data_card
    from pipeline.synthetic.export import export_smartedit_json
    from pipeline.writer import ShardStats, stats_path

    output = as_path(output)
    plan = json.loads(plan_path(output).read_text())
    shards = shard_plans(plan, cfg)
    stats = [ShardStats.load(stats_path(output / s.name)) for s in shards if stats_path(output / s.name).exists()]
    order = plan.get("stages", []) + next((s.extra["stages"] for s in stats if "stages" in s.extra), [])
    yields = merge_yields([plan["yields"]] + [s.extra.get("yields", {}) for s in stats], order)
    kept_scenario: dict[str, int] = {}
    kept_operation: dict[str, int] = {}
    for s in stats:
        for k, v in s.extra.get("kept_by_scenario", {}).items():
            kept_scenario[k] = kept_scenario.get(k, 0) + v
        for k, v in s.extra.get("kept_by_operation", {}).items():
            kept_operation[k] = kept_operation.get(k, 0) + v
    index = finalize_dataset(
        output, name=DATASET_NAME, shard_names=[s.name for s in shards],
        provenance=Provenance.now("synthetic", plan["spec"]),
        extra={"yields": yields, "kept_by_scenario": kept_scenario, "kept_by_operation": kept_operation},
    )
    result: dict[str, Any] = {"output": str(output), "manifest": str(output / "shardindex.json"),
                              "shards": len(shards), "kept": index["counts"]["kept"],
                              "rejected": index["counts"]["rejected"], "kept_by_scenario": kept_scenario,
                              "yields": yields}
    neg_dir = output / NEGATIVES_DIR
    neg_shards = [s.name for s in shards if stats_path(neg_dir / s.name).exists()]
    if neg_shards:
        negatives = finalize_dataset(neg_dir, name=f"{DATASET_NAME}-negatives", shard_names=neg_shards,
                                     provenance=Provenance.now("synthetic", plan["spec"]))
        result["negatives"] = negatives["counts"]["kept"]
        result["negatives_manifest"] = str(neg_dir / "shardindex.json")
    if index["counts"]["kept"]:
        if export:
            result["smartedit_json"] = str(export_smartedit_json(output, output / "smartedit_json"))
        result["contact_sheet"] = str(contact_sheet(output, output / "contact_sheet.png", n=sheet_pairs))
    refresh_data_card(output)  # includes calibration.json when the pairs were labelled
    result["data_card"] = str(output / "DATA_CARD.md")
    return result


def prepare_output(output: Path | str):
    """Make a local output directory (a bucket prefix needs none, see `make_output_dir`); the output as a path."""
    from pipeline.convert import make_output_dir

    output = as_path(output)
    make_output_dir(output)
    return output


def remove_dead_temporaries(output) -> None:
    """Call with the output's `DatasetLock` held: every ``*.tmp`` there is a killed run's."""
    for directory in (output, output / NEGATIVES_DIR):
        remove_stale_temporaries(directory)


def build(cfg: SyntheticConfig, inputs: BuildInputs, output: Path | str,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Plan, write every shard (resuming), finalise, holding the output's dataset lock throughout (a second
    build into the same output fails at once naming the holder). The Prefect flow does the same with one task
    per shard."""
    from pipeline.locking import DatasetLock

    output = prepare_output(output)
    with DatasetLock(output):
        remove_dead_temporaries(output)
        plan = plan_build(cfg, inputs, output)
        shards = shard_plans(plan, cfg)
        for i in range(len(shards)):
            build_shard(cfg, output, i)
            if progress:
                progress(i + 1, len(shards))
        return finalize_build(cfg, output)
