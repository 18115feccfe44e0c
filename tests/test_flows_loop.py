"""The unattended loop: triggered training trains on every event, training splits only, silent reruns.

Under the session's Prefect test server (one harness for the whole session).
"""

from __future__ import annotations

import copy
import errno
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
import yaml

from test_train_data import make_sample, write_dataset, write_stage2_datasets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _with_split(index_path: Path, split: str) -> Path:
    """Record ``split`` in a fixture manifest's provenance, as the converters do."""
    index = json.loads(index_path.read_text())
    index["provenance"]["spec"] = {"split": split}
    index_path.write_text(json.dumps(index))
    return index_path


def _held_out(root: Path, name: str, source: str, kind: str, split: str, n: int) -> Path:
    """A dataset of an evaluation split whose sample keys all start with ``heldout-``."""
    import webdataset as wds
    import numpy as np

    out = root / name
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    with wds.TarWriter(str(out / f"{name}-000000.tar")) as writer:
        for i in range(n):
            sample = make_sample(kind, i, rng)
            writer.write({**sample, "__key__": f"heldout-{name}-{i:05d}"})
    data = (out / f"{name}-000000.tar").read_bytes()
    import hashlib

    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
             "shardlist": [{"url": f"{name}-000000.tar", "nsamples": n, "filesize": len(data),
                            "md5sum": hashlib.md5(data).hexdigest()}],
             "provenance": {"source": source, "spec": {"split": split}}, "counts": {"kept": n, "sources": {source: n}}}
    (out / "shardindex.json").write_text(json.dumps(index))
    return out / "shardindex.json"


def _render_trigger(payload_output: str) -> dict:
    """The `train` deployment's trigger parameters (prefect.yaml) as Prefect's automation renders them for one
    `shards.built` event (the server's own template hydration, not a copy of it)."""
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    deployment = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] if d["name"] == "train")
    params = copy.deepcopy(deployment["triggers"][0]["parameters"])
    # deploy time first: `{{ $SMARTEDIT_PROFILE }}` from the deploying shell (the stack deploys with demo)
    from prefect.utilities.templating import apply_values

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMARTEDIT_PROFILE", "demo")
        params = apply_values(params, dict(os.environ), remove_notset=False)
    RunDeployment._upgrade_v1_templates(params)
    event = ReceivedEvent(id=uuid.uuid4(), occurred=datetime.now(timezone.utc), event="shards.built",
                          resource={"prefect.resource.id": "smartedit.shards.build-synthetic"},
                          payload={"output": payload_output})
    return hydrate(params, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event}))


def test_every_shards_built_event_trains_real_steps_on_training_splits(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.train import train

    output = tmp_path / "shards"
    for path in write_stage2_datasets(output, n=4):
        _with_split(path, "train")
    _held_out(output, "magicbrush-dev", "magicbrush", "edit_pair", "dev", 6)
    _held_out(output, "refcoco-testA", "refcoco", "referring_mask", "testA", 6)

    first, second = _render_trigger(str(output)), _render_trigger(str(output))
    assert first["output_dir"] != second["output_dir"], "each event gets its own run directory"
    runs = []
    for params in (first, second):
        summary = train(**params, steps=2, overrides={"save_pipeline": False})
        assert (summary["start_step"], summary["steps"]) == (0, 2), "a triggered run trains real steps"
        runs.append(Path(summary["run_dir"]).resolve())
    assert runs[0] != runs[1] and all(r.parent == (tmp_path / "runs" / "triggered").resolve() for r in runs)

    with get_client(sync_client=True) as client:
        art = next(a for a in client.read_latest_artifacts() if a.key == "train-stage2-tiny")
    assert "| magicbrush-dev | dev | 6 | excluded |" in art.data
    assert "| refcoco-testA | testA | 6 | excluded |" in art.data
    assert "| magicbrush | train | 4 | used |" in art.data

    # Continuing a finished run without more steps trains nothing: that is a failure, not a success.
    with pytest.raises(RuntimeError, match="trained 0 steps"):
        train(**{**first, "resume": "latest"}, steps=2, overrides={"save_pipeline": False})


def test_no_evaluation_split_reaches_a_training_batch(tmp_path):
    """Held-out datasets are 10× larger than the training ones, so any leak would show in the batches."""
    from model.data import MixtureDataset, make_dataloader
    from model.mixture import build_mixture, load_mixture_spec, load_split_rules, select_training

    train_paths = [_with_split(write_dataset(tmp_path, "magicbrush-train", "magicbrush", "edit_pair", 4), "train"),
                   _with_split(write_dataset(tmp_path, "refcoco-train", "refcoco", "referring_mask", 4, seed=1), "train")]
    held_out = [_held_out(tmp_path, "magicbrush-dev", "magicbrush", "edit_pair", "dev", 40),
                _held_out(tmp_path, "refcoco-val", "refcoco", "referring_mask", "val", 40),
                _held_out(tmp_path, "cocostuff-val2017", "cocostuff", "seg_labelmap", "val2017", 40),
                _held_out(tmp_path, "reasonseg-test", "reasonseg", "reasoning_seg", "test", 40)]
    manifests = train_paths + held_out

    rules = load_split_rules()
    for source, splits in rules.training.items():  # every rule names splits that trains, never an eval split
        assert not set(splits) & {"val", "test", "testA", "testB", "dev", "val2017"}, source
    selection = select_training(manifests)
    assert sorted(r.name for r in selection.used) == ["magicbrush-train", "refcoco-train"]
    assert sorted(r.name for r, _ in selection.excluded) == sorted(p.parent.name for p in held_out)

    mixture = build_mixture(load_mixture_spec(), manifests, allow_missing=True)
    dataset = MixtureDataset(mixture, lambda example: example, resolution=16)
    loader = make_dataloader(dataset, batch_size=4, collate_fn=list)
    keys = [example.key for _, batch in zip(range(16), loader) for example in batch]
    assert len(keys) == 64
    assert not [k for k in keys if k.startswith("heldout-")]


def test_a_rerun_that_changed_nothing_neither_announces_nor_rewrites_provenance(prefect_harness, tmp_path, monkeypatch,
                                                                              samples_copy):
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    from flows.convert import convert_edit
    from flows.demo import sample_sources

    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)
    sources = [s for s in sample_sources(samples_copy.root)["edit"] if s["source"] == "magicbrush"]
    out = tmp_path / "shards"

    def built_events():
        worker.wait_until_empty()
        return [e for e in AssertingEventsClient.last.events if e.event == "shards.built"]

    paths = convert_edit(sources=sources, output=str(out), shard_size=8, workers=1, runner="threads")
    before = {p: Path(p).read_text() for p in paths}
    assert len(built_events()) == 1
    assert convert_edit(sources=sources, output=str(out), shard_size=8, workers=1, runner="threads") == paths
    assert len(built_events()) == 1, "a rerun that changed nothing emits no shards.built"
    assert {p: Path(p).read_text() for p in paths} == before, "the manifests are not rewritten"

    # Inputs rewritten with the same content (as `make demo` does): new mtimes, same data. The provenance
    # keeps naming the run that built the shards; only the recorded input fingerprint follows the files.
    for parquet in (samples_copy.root / "magicbrush").rglob("*.parquet"):  # a private copy: files are touched
        os.utime(parquet, ns=(parquet.stat().st_atime_ns, parquet.stat().st_mtime_ns + 10**9))
    convert_edit(sources=sources, output=str(out), shard_size=8, workers=1, runner="threads")
    assert len(built_events()) == 1
    for p in paths:
        old, new = json.loads(before[p]), json.loads(Path(p).read_text())
        assert new["provenance"] == old["provenance"] and new["shardlist"] == old["shardlist"]
        assert new["input_fingerprint"] != old["input_fingerprint"]

    # A lost shard is rebuilt: that rerun announces (and records its own run).
    lost = next(Path(paths[0]).parent.glob("*.tar"))
    lost.unlink()
    convert_edit(sources=sources, output=str(out), shard_size=8, workers=1, runner="threads")
    events = built_events()
    assert len(events) == 2 and events[-1].payload["manifests"] == [paths[0]]
    assert json.loads(Path(paths[0]).read_text())["provenance"]["flow_run_id"] != \
        json.loads(before[paths[0]])["provenance"]["flow_run_id"]


def test_only_transient_io_errors_are_retried():
    from flows.common import is_transient_error

    assert is_transient_error(OSError(errno.EIO, "input/output error"))
    assert is_transient_error(TimeoutError("read timed out"))
    assert is_transient_error(ConnectionResetError())
    assert not is_transient_error(FileNotFoundError(errno.ENOENT, "no checkpoint", "/ckpt/sam.pth"))
    assert not is_transient_error(PermissionError())
    assert not is_transient_error(ValueError("bad field"))


def test_a_missing_checkpoint_fails_before_anything_is_created(prefect_harness, tmp_path):
    from flows.build_synthetic import build_synthetic
    from flows.train import train

    out = tmp_path / "synthetic"
    with pytest.raises(FileNotFoundError, match="'sam_checkpoint' is .* which does not exist"):
        build_synthetic(input=str(tmp_path), output=str(out), config={"sam_checkpoint": str(tmp_path / "sam_vit_h.pth")})
    assert not out.exists()
    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards", n=2)]
    with pytest.raises(FileNotFoundError, match="'init_from' is .* which does not exist"):
        train(preset="tiny", stage=2, manifests=manifests, output_dir=str(tmp_path / "run"),
              init_from=str(tmp_path / "nope"), allow_missing_sources=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["flows.retrain:retrain", "flows.build_synthetic:build_synthetic",
                                  "flows.convert:convert_segmentation", "flows.convert:convert_vqa",
                                  "flows.convert:convert_edit"])
def test_every_parameter_has_a_description_in_the_ui_form(name):
    """Prefect reads the Google-style `Args:` section into the deployment's parameter schema (the UI form)."""
    import importlib

    from prefect.utilities.callables import parameter_schema

    module, attr = name.split(":")
    flow = getattr(importlib.import_module(module), attr)
    properties = parameter_schema(flow.fn).model_dump()["properties"]
    undocumented = [p for p, spec in properties.items() if not spec.get("description")]
    assert not undocumented, f"{name}: parameters without a description: {undocumented}"


def test_retrain_profiles_load_and_name_unset_variables(monkeypatch):
    from flows.retrain import REQUIRED, load_profile

    demo = load_profile("demo")
    assert all(demo.get(k) for k in REQUIRED) and demo["synthetic"]["input"].startswith(str(ROOT))
    assert set(demo["sources"]) == {"segmentation", "vqa", "edit"}
    for var in ("SMARTEDIT_DATA", "SMARTEDIT_OUT", "SMARTEDIT_MODELS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"production.yaml: .* needs environment variable\(s\) \['SMARTEDIT_DATA'\]"):
        load_profile("production")
    for var in ("SMARTEDIT_DATA", "SMARTEDIT_OUT", "SMARTEDIT_MODELS"):
        monkeypatch.setenv(var, f"/srv/{var.lower()}")
    production = load_profile("production")
    assert production["shards"] == "/srv/smartedit_out/shards" and production["preset"] == "7b"
    from flows.retrain import SyntheticParams
    from pipeline.synthetic.config import SyntheticConfig

    for profile in (demo, production):  # the synthetic step's config is a valid SyntheticConfig
        SyntheticConfig.model_validate(SyntheticParams.model_validate(profile["synthetic"]).config)
    assert production["synthetic"]["config"]["sam_checkpoint"].startswith("/srv/smartedit_models/")
    with pytest.raises(FileNotFoundError, match="known profiles: \\['demo', 'production'\\]"):
        load_profile("nightly")


def test_yields_table_shows_in_out_dropped_and_top_reasons():
    from flows.build_synthetic import yield_rows

    rows = yield_rows([
        {"stage": "scenarios", "in": 8, "out": 17, "dropped": 0, "dropped_by_reason": {}, "fan_out": True, "yield": None},
        {"stage": "quality_filters", "in": 17, "out": 9, "dropped": 8,
         "dropped_by_reason": {"clip_direction": 5, "background": 2, "too_small": 1, "other": 0}, "yield": 0.53},
        {"stage": "mask_area", "in": 10, "out": 7, "yield": 0.7},        # a build that reports no reasons
        {"stage": "scenario_selection", "in": 32, "out": 68, "yield": 2.125},  # an older build's fan-out row
    ])
    assert [(r["stage"], r["in"], r["out"], r["dropped"]) for r in rows] == [
        ("scenarios (fan-out)", 8, 17, 0), ("quality_filters", 17, 9, 8), ("mask_area", 10, 7, 3),
        ("scenario_selection (fan-out)", 32, 68, "")]
    assert rows[1]["top drop reasons"] == "clip_direction 5, background 2, too_small 1"
    assert all("%" not in str(v) for r in rows for v in r.values()), "no percentages (a fan-out stage has none)"
