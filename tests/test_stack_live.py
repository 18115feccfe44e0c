"""Whole-stack checks against a real local stack (`python -m flows.stack start` on a free port):

- a worker killed mid-run: its flow run and subflow become Crashed through the heartbeat automation;
- pictures: the contact-sheet artifact renders in the Prefect UI in headless Chromium (served and embedded).

They start a Prefect server and workers (minutes on a loaded 2-core machine), so they run only when asked:
``SMARTEDIT_STACK_TESTS=1 python -m pytest tests/test_stack_live.py -s`` (figures in BENCHMARKS.md).
The fast, harness-based tests of the same code are in tests/test_stack.py and tests/test_flows_loop.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prefect import flow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not os.environ.get("SMARTEDIT_STACK_TESTS"),
                                reason="whole-stack check: set SMARTEDIT_STACK_TESTS=1 (starts a Prefect server)")


@flow(name="sleepy-child")
def sleepy_child(seconds: float) -> None:
    time.sleep(seconds)


@flow(name="sleepy")
def sleepy(seconds: float = 600) -> None:
    """A parent run whose subflow runs until the worker is killed."""
    sleepy_child(seconds)


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    port = _free_port_pair()
    env = {**os.environ, "SMARTEDIT_PREFECT_PORT": str(port), "SMARTEDIT_STATE_DIR": str(base / "state"),
           "SMARTEDIT_FILES_ROOT": str(base / "files"), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    t0 = time.monotonic()
    started = subprocess.run([sys.executable, "-m", "flows.stack", "start"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    print(f"\nstack start: {time.monotonic() - t0:.0f} s")
    # the exports the stack prints are what a user pastes; use them here too
    exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stderr.splitlines()
                   if line.startswith("export "))
    env.update(exports)
    # what the stack gives its workers: the picture server's URL and folder (flows.common.image_url)
    env.update(SMARTEDIT_FILES_URL=f"http://127.0.0.1:{port + 1}", SMARTEDIT_FILES_ROOT=str(base / "files"))
    try:
        yield {"env": env, "port": port, "files": base / "files", "state": base / "state",
               "api": exports["PREFECT_API_URL"], "ui": f"http://127.0.0.1:{port}"}
    finally:
        subprocess.run([sys.executable, "-m", "flows.stack", "stop"], cwd=ROOT, env=env, timeout=120)


def _api(stack, path: str, body: dict | None = None):
    req = urllib.request.Request(stack["api"] + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _python(stack, code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=stack["env"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_killed_workers_run_and_subflow_become_crashed(stack):
    import psutil

    deployed = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy",
                               "tests/test_stack_live.py:sleepy", "-n", "sleepy", "-p", "cpu"],
                              cwd=ROOT, env=stack["env"], capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    run_id = _python(stack, "from prefect.deployments import run_deployment; "
                            "print(run_deployment('sleepy/sleepy', timeout=0).id)").strip()

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = _api(stack, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        children = _api(stack, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
        if runs[0]["state_type"] == "RUNNING" and children and children[0]["state_type"] == "RUNNING":
            break
        assert runs[0]["state_type"] in ("SCHEDULED", "PENDING", "RUNNING"), runs[0]["state"]
        time.sleep(2)
    else:
        pytest.fail("the sleepy run never reached Running")

    # The machine is lost: the worker and the flow-run process it started die at once (SIGKILL, no cleanup).
    worker_pid = int((stack["state"] / "pids" / str(stack["port"]) / "worker-cpu.pid").read_text())
    worker = psutil.Process(worker_pid)
    tree = [worker, *worker.children(recursive=True)]
    assert len(tree) >= 2, "the flow run runs in a child process of the worker"
    killed_at = time.monotonic()
    for proc in tree:
        proc.send_signal(signal.SIGKILL)

    ids = [run_id, children[0]["id"]]
    states = {}
    while time.monotonic() - killed_at < 180:
        states = {r["id"]: r["state_type"] for r in _api(stack, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})}
        if all(states.get(i) == "CRASHED" for i in ids):
            break
        time.sleep(1)
    elapsed = time.monotonic() - killed_at
    print(f"\nkilled worker → parent and subflow Crashed after {elapsed:.0f} s ({states})")
    assert all(states.get(i) == "CRASHED" for i in ids), states


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="headless Chromium not installed (`make system-deps`)")
def test_the_contact_sheet_renders_in_the_prefect_ui(stack, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    sheet = stack["files"] / "shards" / "synthetic" / "contact_sheet.png"
    outside = tmp_path / "contact_sheet.png"
    code = f"""
from pathlib import Path
from PIL import Image
from prefect import flow
from flows.common import image_artifact
Path({str(sheet.parent)!r}).mkdir(parents=True, exist_ok=True)
Image.new("RGB", (321, 97), (200, 30, 30)).save({str(sheet)!r})
Image.new("RGB", (321, 97), (30, 30, 200)).save({str(outside)!r})
@flow
def publish():
    print(image_artifact("live-served-sheet", {str(sheet)!r}, "Contact sheet"))
    print(image_artifact("live-embedded-sheet", {str(outside)!r}, "Contact sheet")[:5])
publish()
"""
    urls = _python(stack, code).split()
    assert urls[-2].startswith(f"http://127.0.0.1:{stack['port'] + 1}/") and urls[-1] == "data:"

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        for key, prefix in (("live-served-sheet", f"http://127.0.0.1:{stack['port'] + 1}/"), ("live-embedded-sheet", "data:")):
            artifact = _api(stack, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})[0]
            driver.get(f"{stack['ui']}/artifacts/artifact/{artifact['id']}")
            rendered = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                rendered = driver.execute_script(
                    "return Array.from(document.querySelectorAll('img'))"
                    ".map(i => [i.src.slice(0, 80), i.complete, i.naturalWidth, i.naturalHeight])")
                if any(src.startswith(prefix) and done and w > 0 for src, done, w, _ in rendered):
                    break
                time.sleep(1)
            driver.save_screenshot(str(tmp_path / f"{key}.png"))
            shown = [r for r in rendered if r[0].startswith(prefix)]
            assert shown and shown[0][1] and shown[0][2:] == [321, 97], (key, rendered)
    finally:
        driver.quit()
