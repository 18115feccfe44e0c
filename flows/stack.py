"""The local Prefect stack behind `make demo` and `make stop`.

Starts a Prefect server on SQLite with its home inside the project (``.prefect/``), the work pools
``cpu`` and ``gpu`` (process type) with one worker each, the ``gpu`` global concurrency limit, and
deploys every deployment of prefect.yaml. Processes are started in their own session with SIGINT
restored (a worker launched from a script otherwise ignores it) and stopped by the pids recorded in
``.prefect/pids``.

Usage: python -m flows.stack {start,stop,status,demo}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("smartedit.stack")

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".prefect"
PIDS = STATE / "pids"
LOGS = STATE / "logs"
DEMO = ROOT / ".demo"
PORT = int(os.environ.get("SMARTEDIT_PREFECT_PORT", "4200"))
API_URL = f"http://127.0.0.1:{PORT}/api"
UI_URL = f"http://127.0.0.1:{PORT}"
WORK_POOLS = ("cpu", "gpu")


def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(STATE / "home"),
        PREFECT_API_URL=API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        SMARTEDIT_ROOT=str(ROOT),  # filled into prefect.yaml's pull step at deploy time
        # the training profile the `train` trigger uses (data_specs/profiles/train); demo unless set
        SMARTEDIT_PROFILE=os.environ.get("SMARTEDIT_PROFILE", "demo"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def _prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("prefect")
    return subprocess.run([str(exe), *args], cwd=ROOT, env=stack_env(), capture_output=True, text=True, check=check)


def _restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(name: str, *args: str) -> int:
    PIDS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("prefect")
    with open(LOGS / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            [str(exe), *args], cwd=ROOT, env=stack_env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_restore_sigint,
        )
    (PIDS / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _alive(name: str) -> bool:
    pid_file = PIDS / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def server_healthy() -> bool:
    try:
        with urllib.request.urlopen(f"{API_URL}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start() -> None:
    """Start (or reuse) server, pools, concurrency limit and workers, then deploy everything."""
    if not server_healthy():
        log.info("starting Prefect server on %s (home %s)", UI_URL, STATE / "home")
        _spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(PORT))
        deadline = time.monotonic() + 180
        while not server_healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server did not become healthy; see {LOGS / 'server.log'}")
            time.sleep(0.5)
    for pool in WORK_POOLS:
        if _prefect("work-pool", "inspect", pool, check=False).returncode != 0:
            _prefect("work-pool", "create", pool, "--type", "process")
    if _prefect("global-concurrency-limit", "inspect", "gpu", check=False).returncode != 0:
        _prefect("global-concurrency-limit", "create", "gpu", "--limit", "1")
    for pool in WORK_POOLS:
        name = f"worker-{pool}"
        if not _alive(name):
            _spawn(name, "worker", "start", "--pool", pool, "--type", "process", "--name", f"local-{pool}")
    deployed = _prefect("--no-prompt", "deploy", "--all", check=False)
    if deployed.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{deployed.stdout}\n{deployed.stderr}")
    log.info("stack ready: UI %s, logs %s", UI_URL, LOGS)


def stop() -> None:
    """Stop every process this stack started, by the pids it recorded."""
    if not PIDS.exists():
        return
    for pid_file in sorted(PIDS.glob("*.pid")):
        try:
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                os.killpg(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
        log.info(f"stopped {pid_file.stem}")


def status() -> None:
    log.info(f"server {'up' if server_healthy() else 'down'} at {UI_URL}")
    for pid_file in sorted(PIDS.glob("*.pid")) if PIDS.exists() else []:
        log.info(f"{pid_file.stem}: pid {pid_file.read_text()} {'alive' if _alive(pid_file.stem) else 'dead'}")


def run(deployment: str, parameters: dict, timeout: float = 1800) -> dict:
    """Run a deployment through the stack's workers and wait for it; raise if it does not complete."""
    from datetime import datetime, timezone

    os.environ.update(stack_env())
    from prefect.deployments import run_deployment

    started = datetime.now(timezone.utc).isoformat()
    t0 = time.monotonic()
    flow_run = run_deployment(deployment, parameters=parameters, timeout=timeout, poll_interval=1)
    state = flow_run.state
    log.info(f"{deployment}: {state.name} in {time.monotonic() - t0:.0f} s (flow run {flow_run.id})")
    if not state.is_completed():
        raise RuntimeError(f"{deployment} ended {state.name}: {state.message}; worker logs in {LOGS}")
    return {"flow_run_id": str(flow_run.id), "started": started}


def wait_for_triggered(deployment: str, after: str, timeout: float = 900) -> str | None:
    """Wait for the first run of ``deployment`` created after ``after`` (ISO time) to finish; its state name."""
    from datetime import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    os.environ.update(stack_env())
    flow_name, _, deployment_name = deployment.partition("/")
    since = datetime.fromisoformat(after)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))
                    if r.created and r.created >= since]
            if runs and runs[0].state and runs[0].state.is_final():
                return runs[0].state.name
            time.sleep(2)
    return None


def demo() -> None:
    """The whole chain on the bundled sample data, through `prefect deployment run`-equivalent calls."""
    from flows.demo import run_demo

    start()
    run_demo(DEMO, run, wait_for_triggered)
    log.info(f"\nPrefect UI: {UI_URL}    stop everything with: make stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "demo"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    {"start": start, "stop": stop, "status": status, "demo": demo}[args.command]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
