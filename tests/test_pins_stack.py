"""README claims about `python -m flows.stack start|stop|status|demo` (argument handling and each handler, without
starting servers) and `prefect --no-prompt deploy --all` (run for real against the session's test server: every
deployment of prefect.yaml is created with its pool, trigger, schedule and concurrency limit)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import flows.stack as stack

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [[], ["restart"], ["start", "extra"], ["--help"]])
def test_bad_or_missing_commands_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as err:
        stack.main(argv)
    assert err.value.code == (0 if argv == ["--help"] else 2)
    captured = capsys.readouterr()
    assert "{start,stop,status,demo}" in captured.out + captured.err


@pytest.mark.parametrize("command", ["start", "stop", "status", "demo"])
def test_each_command_runs_its_handler(command, monkeypatch, caplog):
    called = []
    for name in ("start", "stop", "status", "demo"):
        monkeypatch.setattr(stack, name, lambda name=name: called.append(name))
    with caplog.at_level(logging.INFO):
        assert stack.main([command]) == 0
    assert called == [command]
    assert ("export PREFECT_API_URL=" in caplog.text) == (command == "start")


def test_a_failing_handler_is_one_error_line_and_exit_1(monkeypatch, caplog):
    def boom():
        raise stack.StackError("port 4200 is in use by another program; set SMARTEDIT_PREFECT_PORT")

    monkeypatch.setattr(stack, "start", boom)
    with caplog.at_level(logging.ERROR):
        assert stack.main(["start"]) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "port 4200 is in use" in errors[0].getMessage()


def test_stop_kills_recorded_process_groups_and_status_reports(tmp_path, monkeypatch, caplog):
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setattr(stack, "PIDS", pids)
    stack.stop()  # nothing recorded: nothing to do
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (pids / "worker-cpu.pid").write_text(str(proc.pid))
        (pids / "server.pid").write_text("not-a-pid")
        monkeypatch.setattr(stack, "server_healthy", lambda: False)
        with caplog.at_level(logging.INFO):
            stack.status()
        assert "server down" in caplog.text and f"worker-cpu: pid {proc.pid}" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO):
            stack.stop()
        assert proc.wait(timeout=10) != 0  # terminated by the signal to its group
        assert list(pids.iterdir()) == []
        assert "stopped worker-cpu" in caplog.text and "stopped server" in caplog.text
    finally:
        if proc.poll() is None:
            proc.kill()


def test_start_creates_pools_limit_then_deploys_all(monkeypatch):
    calls = []

    def fake_prefect(*args, check=True):
        calls.append(args)
        rc = 1 if args[:2] in (("work-pool", "inspect"), ("global-concurrency-limit", "inspect")) else 0
        return SimpleNamespace(returncode=rc, stdout="", stderr="")

    monkeypatch.setattr(stack, "_prefect", fake_prefect)
    monkeypatch.setattr(stack, "server_healthy", lambda: True)
    monkeypatch.setattr(stack, "_alive", lambda name: True)
    monkeypatch.setattr(stack, "ensure_crash_automation", lambda: calls.append(("automation",)))
    stack.start()
    assert ("work-pool", "create", "cpu", "--type", "process") in calls
    assert ("work-pool", "create", "gpu", "--type", "process") in calls
    assert ("global-concurrency-limit", "create", "gpu", "--limit", "1") in calls
    assert calls[-1] == ("--no-prompt", "deploy", "--all")  # after the pools exist (deploying to a missing pool fails)

    def failing_deploy(*args, check=True):
        rc = 1 if args[-1] == "--all" else 0
        return SimpleNamespace(returncode=rc, stdout="", stderr="pool 'gpu' not found")

    monkeypatch.setattr(stack, "_prefect", failing_deploy)
    with pytest.raises(stack.StackError, match="prefect deploy failed"):
        stack.start()


def test_stack_env_fills_the_pull_step_and_api():
    env = stack.stack_env()
    assert env["SMARTEDIT_ROOT"] == str(REPO)
    assert env["PREFECT_API_URL"] == stack.API_URL and env["PREFECT_HOME"] == str(stack.HOME)


def test_deploy_all_creates_every_deployment_as_declared(prefect_harness, tmp_path):
    """`prefect --no-prompt deploy --all` (what `flows.stack start` runs) against the session's test server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    declared = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    with get_client(sync_client=True) as client:
        for pool in stack.WORK_POOLS:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except Exception:  # already there from another test of the session
                pass
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), SMARTEDIT_ROOT=str(REPO),
               PREFECT_HOME=str(tmp_path / "home"))
    exe = Path(sys.executable).with_name("prefect")
    done = subprocess.run([str(exe), "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        assert set(declared) <= set(deployments)
        for name, spec in declared.items():
            dep = deployments[name]
            assert dep.work_pool_name == spec["work_pool"]["name"], name
            assert dep.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
            if "concurrency_limit" in spec:
                limit = dep.global_concurrency_limit.limit if dep.global_concurrency_limit else dep.concurrency_limit
                assert limit == spec["concurrency_limit"], name
            crons = [s.schedule.cron for s in dep.schedules]
            assert crons == [s["cron"] for s in spec.get("schedules") or []], name
            if spec.get("parameters"):
                assert dep.parameters == spec["parameters"] or "{{" in str(spec["parameters"]), name
                assert "{{ $" not in str(dep.parameters), name  # environment templates are filled at deploy time
        triggered = [a for a in client.read_automations() if "shards.built" in str(a.trigger)]
        assert triggered, "the train deployment's shards.built trigger became an automation"
