"""Pins the flows' promises: one `shards.built` event per convert run (with what the `train` trigger reads), one task
run per output shard, no `gpu` slot taken on CPU, and every deployment in prefect.yaml consistent with the flows."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

import flows.common as common
from pipeline.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]


def _deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _flow_of(entrypoint: str):
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


# -- events and task granularity ----------------------------------------------------------------------------------------
def test_convert_emits_one_shards_built_event_and_runs_one_task_per_shard(prefect_harness, samples_seed0, tmp_path,
                                                                          monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.convert import convert_vqa
    from flows.demo import sample_sources

    events = []
    real_emit = common.emit_event
    monkeypatch.setattr(common, "emit_event", lambda **kw: events.append(kw) or real_emit(**kw))
    out = tmp_path / "shards"
    paths = convert_vqa(sources=sample_sources(samples_seed0.root)["vqa"], output=str(out), shard_size=8, workers=1,
                        runner="threads")
    manifests = [load_manifest(p) for p in paths]
    n_shards = sum(len(m["shardlist"]) for m in manifests)
    assert n_shards >= 3  # several shards, so "one task per shard" is not "one task"

    assert len(events) == 1
    event = events[0]
    assert event["event"] == "shards.built"
    trigger = next(d for d in _deployments() if d["name"] == "train")["triggers"][0]
    assert event["event"] in trigger["expect"]
    assert fnmatch.fnmatchcase(event["resource"]["prefect.resource.id"], trigger["match"]["prefect.resource.id"])
    assert event["payload"] == {"output": str(out), "manifests": paths,
                                "kept": sum(m["counts"]["kept"] for m in manifests)}

    # one task run per output shard, none per sample: read the inner flow run's task runs back from the server
    flow_run_id = manifests[0]["provenance"]["flow_run_id"]
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = sorted(t.name for t in task_runs)
    assert len(names) == n_shards == len(set(names))
    assert all("-shard-" in n for n in names)

    events.clear()
    convert_vqa(sources=sample_sources(samples_seed0.root)["vqa"], output=str(tmp_path / "quiet"), shard_size=8,
                workers=1, runner="threads", announce=False)
    assert events == []


# -- gpu slots ----------------------------------------------------------------------------------------------------------
def test_gpu_slot_is_a_no_op_on_cpu_and_one_strict_slot_on_cuda(monkeypatch):
    import prefect.concurrency.sync as conc

    taken = []

    @contextlib.contextmanager
    def fake_concurrency(name, occupy=1, strict=False, **kw):
        taken.append((name, occupy, strict))
        yield

    monkeypatch.setattr(conc, "concurrency", fake_concurrency)
    monkeypatch.setattr(common, "ensure_gpu_limit", lambda slots: taken.append(("ensure", slots, None)))
    for device in ("cpu", "CPU", "mps", ""):
        with common.gpu_slot(device):
            pass
    assert taken == []
    with common.gpu_slot("cuda:0"):
        pass
    assert taken[-1] == ("gpu", 1, True) and taken[0][0] == "ensure"


def test_gpu_flows_hold_the_slot_only_through_gpu_slot():
    """Every flow that may run on a GPU takes its slot through `gpu_slot` (so CPU runs take none), never directly."""
    for module in ("flows.train", "flows.evaluate", "flows.build_synthetic"):
        source = inspect.getsource(importlib.import_module(module))
        assert "gpu_slot(" in source, module
        assert "concurrency(" not in source.replace("gpu_slot(", ""), module


# -- prefect.yaml -------------------------------------------------------------------------------------------------------
def test_every_deployment_matches_its_flow():
    from prefect.flows import Flow

    from flows.stack import WORK_POOLS

    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pull = doc["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert "SMARTEDIT_ROOT" in pull  # explicit pull, resolved at deploy time
    names = [d["name"] for d in doc["deployments"]]
    assert len(names) == len(set(names))
    for dep in doc["deployments"]:
        flow = _flow_of(dep["entrypoint"])
        assert isinstance(flow, Flow), dep["name"]
        params = inspect.signature(flow.fn).parameters
        assert dep["work_pool"]["name"] in WORK_POOLS, dep["name"]
        if "gpu" in dep.get("tags", []):
            assert dep["work_pool"]["name"] == "gpu", dep["name"]
        if "concurrency_limit" in dep:
            assert isinstance(dep["concurrency_limit"], int) and dep["concurrency_limit"] >= 1
        given = dict(dep.get("parameters") or {})
        assert set(given) <= set(params), (dep["name"], set(given) - set(params))
        for trig in dep.get("triggers") or []:
            t_params = trig.get("parameters") or {}
            assert set(t_params) <= set(params), (dep["name"], set(t_params) - set(params))
            required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
            assert required <= set(t_params) | set(given), (dep["name"], required - set(t_params) - set(given))
        for sched in dep.get("schedules") or []:
            required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
            assert required <= set(given), (dep["name"], required - set(given))
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=sched["cron"], timezone=sched.get("timezone", "UTC"))  # raises on a bad cron
        # the parameters as a run receives them (templates filled with a path) pass the flow's own validation
        for extra in [{}] + [t.get("parameters") or {} for t in dep.get("triggers") or []]:
            merged = _filled({**given, **extra})
            if merged:
                missing = {n: _dummy(p) for n, p in params.items() if p.default is inspect.Parameter.empty}
                flow.validate_parameters({**missing, **merged})


def _filled(value):
    """Replace Jinja templates ({{ $VAR }}, {{ event.payload.x }}) by a path, keeping the structure."""
    if isinstance(value, str):
        return value.replace(value[value.index("{{"):value.rindex("}}") + 2], "/x") if "{{" in value else value
    if isinstance(value, dict):
        return {k: _filled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v) for v in value]
    return value


def _dummy(param: inspect.Parameter):
    """A placeholder for a required parameter supplied at run time."""
    ann = str(param.annotation)
    return [] if ann.startswith("list") else {} if ann.startswith("dict") else "/x"


def test_specific_deployment_settings():
    deps = {d["name"]: d for d in _deployments()}
    train = deps["train"]
    assert train["concurrency_limit"] == 1
    trig = train["triggers"][0]
    assert trig["expect"] == ["shards.built"] and trig.get("enabled", True)
    assert trig["parameters"]["profile"] == "{{ $SMARTEDIT_PROFILE }}"  # filled at deploy time
    from data_specs import spec_path

    for name in ("demo", "production"):  # every training profile trains stage 2 on an event
        assert yaml.safe_load(spec_path(f"profiles/{name}.yaml").read_text())["train"]["stage"] == 2
    assert "event.payload.output" in trig["parameters"]["manifests"]
    nightly = deps["scheduled-retrain"]
    assert [s["cron"] for s in nightly["schedules"]] == ["0 3 * * *"]
    assert nightly["concurrency_limit"] == 1
    from prefect.client.schemas.schedules import CronSchedule

    with pytest.raises(ValueError):
        CronSchedule(cron="61 3 * * *")  # the check above can fail
