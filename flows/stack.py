"""The local Prefect stack behind `make demo` and `make stop`.

Starts a Prefect server with its home inside the project (``.prefect/``), the work pools ``cpu`` and
``gpu`` (process type) with one worker each, the ``gpu`` global concurrency limit, the automation that
marks runs whose heartbeats stopped as Crashed, a read-only file server for pictures the UI shows,
and deploys every deployment of prefect.yaml. Processes are started in their own session with SIGINT
restored (a worker launched from a script otherwise ignores it) and stopped by the pids recorded in
``.prefect/pids/<port>/``.

Environment:
  SMARTEDIT_PREFECT_PORT   the server's port (default 4200); the file server takes the next one
                           (SMARTEDIT_FILES_PORT). A busy port fails at once, naming it.
  SMARTEDIT_DATABASE_URL   a Postgres URL (postgresql+asyncpg://user:pass@host:5432/db) instead of the
                           default SQLite file, for teams and heavy load (README "Local stack").

Usage: python -m flows.stack {start,stop,status,demo}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("smartedit.stack")

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("SMARTEDIT_STATE_DIR", ROOT / ".prefect"))
DEMO = ROOT / ".demo"
PORT = int(os.environ.get("SMARTEDIT_PREFECT_PORT", "4200"))
FILES_PORT = int(os.environ.get("SMARTEDIT_FILES_PORT", str(PORT + 1)))
FILES_ROOT = Path(os.environ.get("SMARTEDIT_FILES_ROOT", DEMO))
PIDS = STATE / "pids" / str(PORT)
LOGS = STATE / "logs" / str(PORT)
HOME = STATE / ("home" if PORT == 4200 else f"home-{PORT}")
API_URL = f"http://127.0.0.1:{PORT}/api"
UI_URL = f"http://127.0.0.1:{PORT}"
FILES_URL = f"http://127.0.0.1:{FILES_PORT}"
WORK_POOLS = ("cpu", "gpu")
# Flow runs emit a heartbeat event this often (Prefect's minimum is 30 s); the automation below marks a
# run Crashed when none arrived for HEARTBEAT_GRACE seconds (a killed worker or machine). The grace leaves
# room for late heartbeats: on a 2-core machine at load 13, a run busy importing torch delivered one 41 s
# late, and a 45 s grace crashed that live run. The default 90 s leaves a minute of slack (a lost worker's
# run is Crashed 60-95 s later); on a quiet machine SMARTEDIT_HEARTBEAT_GRACE=45 detects it within 50 s.
HEARTBEAT_SECONDS = 30
HEARTBEAT_GRACE = int(os.environ.get("SMARTEDIT_HEARTBEAT_GRACE", "90"))
CRASH_AUTOMATION = "Mark runs Crashed when their heartbeat stops"


class StackError(RuntimeError):
    """A stack problem the user fixes (a busy port, a failed start): shown as one line, no traceback."""


def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(HOME),
        PREFECT_API_URL=API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
        # SQLite: Prefect already opens it in WAL mode with a 60 s busy timeout; give statements the same
        # patience instead of the default 10 s, which under load logs "database is locked" tracebacks.
        PREFECT_SERVER_DATABASE_TIMEOUT="60",
        PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT="30",
        SMARTEDIT_ROOT=str(ROOT),  # filled into prefect.yaml's pull step at deploy time
        SMARTEDIT_FILES_URL=FILES_URL,  # pictures under FILES_ROOT are shown in the UI through this server
        SMARTEDIT_FILES_ROOT=str(FILES_ROOT),
        # the training profile the `train` trigger uses (the train: section of data_specs/profiles/<name>.yaml); demo unless set
        SMARTEDIT_PROFILE=os.environ.get("SMARTEDIT_PROFILE", "demo"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    if os.environ.get("SMARTEDIT_DATABASE_URL"):
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = os.environ["SMARTEDIT_DATABASE_URL"]
    return env


def _prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("prefect")
    return subprocess.run([str(exe), *args], cwd=ROOT, env=stack_env(), capture_output=True, text=True, check=check)


def _restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(name: str, *args: str, exe: str | None = None) -> int:
    PIDS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    command = [exe, *args] if exe else [str(Path(sys.executable).with_name("prefect")), *args]
    with open(LOGS / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=stack_env(), stdout=out, stderr=subprocess.STDOUT,
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


def port_in_use(port: int) -> bool:
    """True when something already listens on 127.0.0.1:``port`` (checked by binding, at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _busy(port: int, variable: str) -> StackError:
    return StackError(f"port {port} on 127.0.0.1 is in use by another program; stop it or pick a free port, "
                      f"e.g. {variable}={port + 100} make demo")


def server_healthy() -> bool:
    try:
        with urllib.request.urlopen(f"{API_URL}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start() -> None:
    """Start (or reuse) server, pools, concurrency limit, automation, workers and file server; deploy everything."""
    if not server_healthy():
        if port_in_use(PORT):
            raise _busy(PORT, "SMARTEDIT_PREFECT_PORT")
        db = "Postgres (SMARTEDIT_DATABASE_URL)" if os.environ.get("SMARTEDIT_DATABASE_URL") else f"SQLite under {HOME}"
        log.info("starting Prefect server on %s (%s)", UI_URL, db)
        _spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(PORT))
        deadline = time.monotonic() + 180
        while not server_healthy():
            if not _alive("server"):
                tail = (LOGS / "server.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
                raise StackError(f"the Prefect server exited during start: {tail[0]} (full log: {LOGS / 'server.log'})")
            if time.monotonic() > deadline:
                raise StackError(f"the Prefect server did not become healthy in 180 s; see {LOGS / 'server.log'}")
            time.sleep(0.5)
    elif not _alive("server"):
        log.info("reusing the Prefect server already answering on %s (not started by this stack)", UI_URL)
    for pool in WORK_POOLS:
        if _prefect("work-pool", "inspect", pool, check=False).returncode != 0:
            _prefect("work-pool", "create", pool, "--type", "process")
    if _prefect("global-concurrency-limit", "inspect", "gpu", check=False).returncode != 0:
        _prefect("global-concurrency-limit", "create", "gpu", "--limit", "1")
    ensure_crash_automation()
    for pool in WORK_POOLS:
        name = f"worker-{pool}"
        if not _alive(name):
            _spawn(name, "worker", "start", "--pool", pool, "--type", "process", "--name", f"local-{pool}-{PORT}")
    if not _alive("files"):
        if port_in_use(FILES_PORT):
            raise _busy(FILES_PORT, "SMARTEDIT_FILES_PORT")
        FILES_ROOT.mkdir(parents=True, exist_ok=True)
        # Read-only (GET/HEAD only) on 127.0.0.1: lets the UI show contact sheets, which browsers refuse as file:// links.
        _spawn("files", "-m", "http.server", str(FILES_PORT), "--bind", "127.0.0.1", "--directory", str(FILES_ROOT),
               exe=sys.executable)
    deployed = _prefect("--no-prompt", "deploy", "--all", check=False)
    if deployed.returncode != 0:
        raise StackError(f"prefect deploy failed:\n{deployed.stdout}\n{deployed.stderr}")
    log.info("stack ready: UI %s, pictures %s (from %s), logs %s", UI_URL, FILES_URL, FILES_ROOT, LOGS)


def ensure_crash_automation() -> None:
    """The automation Prefect documents for zombie runs: a flow run whose heartbeat (every
    HEARTBEAT_SECONDS) is not followed by another heartbeat or a final state within HEARTBEAT_GRACE
    seconds is set to Crashed. Replaced on every start so its settings follow this file."""
    from datetime import timedelta

    os.environ.update(stack_env())
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=CRASH_AUTOMATION).delete()
    except (ValueError, Exception):  # noqa: BLE001 - not there yet
        pass
    Automation(
        name=CRASH_AUTOMATION,
        description=f"Flow runs send a heartbeat every {HEARTBEAT_SECONDS} s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY); "
                    f"a run silent for {HEARTBEAT_GRACE} s lost its worker: it is marked Crashed. Rerun it to resume.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=HEARTBEAT_GRACE),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"No heartbeat for {HEARTBEAT_GRACE} s: the worker or machine was lost. "
                                            "Rerun the deployment: finished shards are kept and resumed.")],
    ).create()


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


def exports() -> str:
    """The lines a user pastes to point the CLI (`prefect ...`, `smartedit ...`) at this stack."""
    return f"export PREFECT_API_URL={API_URL}\nexport PREFECT_HOME={HOME}"


def status() -> None:
    log.info(f"server {'up' if server_healthy() else 'down'} at {UI_URL}")
    for pid_file in sorted(PIDS.glob("*.pid")) if PIDS.exists() else []:
        log.info(f"{pid_file.stem}: pid {pid_file.read_text()} {'alive' if _alive(pid_file.stem) else 'dead'}")


# Engine bookkeeping lines that say nothing about the work; everything else a run logs is echoed.
_NOISE = re.compile(r"^(Created task run|Created subflow run|Executing|Finished in state|Beginning |Opening process|"
                    r"Running \d+ deployment pull step|Executing deployment step|Process .* exited|Completed submission|"
                    r"Downloading flow code|Worker .* submitting|Submitting flow run|Aborted submission|Running on worker|"
                    r"Flow run .* submitted to infrastructure|Deployment step|All deployment steps)")


class LogFollower:
    """Echo, in the terminal, the log lines of a flow run and of every subflow below it, as they arrive."""

    def __init__(self, client, flow_run_id, prefix: str):
        self.client, self.root, self.prefix = client, flow_run_id, prefix
        self.seen: set = set()
        self.since = None
        self.runs = {flow_run_id}

    def _children(self) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        frontier = set(self.runs)
        while frontier:
            children = self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=list(frontier))))
            frontier = {c.id for c in children} - self.runs
            self.runs |= frontier

    def poll(self) -> None:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
        from prefect.client.schemas.sorting import LogSort

        try:
            self._children()
            logs = self.client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(self.runs)),
                                     timestamp=LogFilterTimestamp(after_=self.since) if self.since else None),
                sort=LogSort.TIMESTAMP_ASC, limit=200)
        except Exception:  # noqa: BLE001 - echoing is best effort; the run's state decides
            return
        for entry in logs:
            if entry.id in self.seen:
                continue
            self.seen.add(entry.id)
            self.since = entry.timestamp
            if entry.level >= logging.INFO and not _NOISE.match(entry.message):
                log.info("  %s | %s", self.prefix, entry.message.splitlines()[0][:300])


def run(deployment: str, parameters: dict, timeout: float = 1800) -> dict:
    """Run a deployment through the stack's workers; echo its (and its subflows') log lines while it runs;
    raise if it does not complete."""
    from datetime import datetime, timezone

    os.environ.update(stack_env())
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    started = datetime.now(timezone.utc).isoformat()
    t0 = time.monotonic()
    log.info("%s: started", deployment)
    flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
    with get_client(sync_client=True) as client:
        follower = LogFollower(client, flow_run.id, deployment.split("/")[-1])
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            follower.poll()
            if flow_run.state and flow_run.state.is_final():
                time.sleep(1)
                follower.poll()
                break
            if time.monotonic() - t0 > timeout:
                raise StackError(f"{deployment}: still {flow_run.state.name} after {timeout:.0f} s (flow run {flow_run.id})")
            time.sleep(2)
    state = flow_run.state
    log.info(f"{deployment}: {state.name} in {time.monotonic() - t0:.0f} s (flow run {flow_run.id})")
    if not state.is_completed():
        raise StackError(f"{deployment} ended {state.name}: {state.message}; logs: prefect flow-run logs {flow_run.id} "
                         f"(worker logs in {LOGS})")
    return {"flow_run_id": str(flow_run.id), "started": started}


def wait_for_triggered(deployment: str, after: str, timeout: float = 900) -> str | None:
    """Wait for the first run of ``deployment`` created after ``after`` (ISO time), echoing its log lines;
    returns its final state name (None when no run appeared in time)."""
    from datetime import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    os.environ.update(stack_env())
    flow_name, _, deployment_name = deployment.partition("/")
    since = datetime.fromisoformat(after)
    deadline = time.monotonic() + timeout
    follower = None
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if follower is None:
                runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))
                        if r.created and r.created >= since]
                if runs:
                    follower = LogFollower(client, runs[-1].id, deployment_name + " (triggered)")
            if follower is not None:
                follower.poll()
                flow_run = client.read_flow_run(follower.root)
                if flow_run.state and flow_run.state.is_final():
                    time.sleep(1)
                    follower.poll()
                    return flow_run.state.name
            time.sleep(2)
    return None


def demo() -> None:
    """The whole chain on the bundled sample data, through `prefect deployment run`-equivalent calls."""
    from flows.demo import run_demo

    start()
    run_demo(DEMO, run, wait_for_triggered)
    log.info(f"\nPrefect UI: {UI_URL}    pictures: {FILES_URL}    stop everything with: make stop")
    log.info("To use the CLI (prefect ..., smartedit ...) against this stack, run:\n%s", exports())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "demo"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        {"start": start, "stop": stop, "status": status, "demo": demo}[args.command]()
    except (StackError, RuntimeError) as err:  # one line for the user, not a traceback
        log.error("error: %s", err)
        return 1
    if args.command == "start":
        log.info("To use the CLI against this stack, run:\n%s", exports())
    return 0


if __name__ == "__main__":
    sys.exit(main())
