"""flows.stack without starting a server: busy ports, per-port pid files, exports, picture URLs, log echo filter."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_busy_port_fails_at_once_with_one_line_naming_it(tmp_path):
    """The CLI as a user runs it: no 180 s wait, no traceback, the port and the variable in one line."""
    busy = _listening_socket()
    port = busy.getsockname()[1]
    try:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SMARTEDIT_PREFECT_PORT": str(port),
               "SMARTEDIT_STATE_DIR": str(tmp_path / "state"), "PREFECT_HOME": str(tmp_path / "home")}
        done = subprocess.run([sys.executable, "-m", "flows.stack", "start"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        busy.close()
    assert done.returncode == 1
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [f"error: port {port} on 127.0.0.1 is in use by another program; stop it or pick a free port, "
                     f"e.g. SMARTEDIT_PREFECT_PORT={port + 100} make demo"]
    assert not (tmp_path / "state" / "pids").exists(), "nothing was started"


def test_port_in_use_and_pid_files_per_port(tmp_path, monkeypatch):
    from flows import stack

    busy = _listening_socket()
    port = busy.getsockname()[1]
    try:
        assert stack.port_in_use(port)
    finally:
        busy.close()
    assert not stack.port_in_use(port)

    monkeypatch.setattr(stack, "PIDS", tmp_path / "pids" / "4555")
    monkeypatch.setattr(stack, "LOGS", tmp_path / "logs" / "4555")
    pid = stack._spawn("files", "-c", "import time; time.sleep(30)", exe=sys.executable)
    assert (tmp_path / "pids" / "4555" / "files.pid").read_text() == str(pid) and stack._alive("files")
    stack.stop()
    assert not (tmp_path / "pids" / "4555" / "files.pid").exists() and not stack._alive("files")


def test_exports_name_the_api_and_home_of_this_port():
    from flows import stack

    lines = stack.exports().splitlines()
    assert lines == [f"export PREFECT_API_URL=http://127.0.0.1:{stack.PORT}/api", f"export PREFECT_HOME={stack.HOME}"]
    env = stack.stack_env()
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30" and env["PREFECT_API_URL"] == stack.API_URL
    assert int(env["PREFECT_SERVER_DATABASE_TIMEOUT"]) >= 60


def test_postgres_option_sets_prefects_database_url(monkeypatch):
    from flows import stack

    url = "postgresql+asyncpg://prefect:prefect@127.0.0.1:5432/prefect"
    monkeypatch.setenv("SMARTEDIT_DATABASE_URL", url)
    assert stack.stack_env()["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == url
    monkeypatch.delenv("SMARTEDIT_DATABASE_URL")
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in stack.stack_env()  # SQLite under PREFECT_HOME


def test_picture_urls_served_or_embedded(tmp_path, monkeypatch):
    import base64
    import io

    from flows.common import image_url

    served = tmp_path / "files" / "shards" / "synthetic" / "contact sheet.png"
    served.parent.mkdir(parents=True)
    Image.new("RGB", (40, 20), (255, 0, 0)).save(served)
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (2000, 500), (0, 0, 255)).save(outside)
    monkeypatch.setenv("SMARTEDIT_FILES_URL", "http://127.0.0.1:4201")
    monkeypatch.setenv("SMARTEDIT_FILES_ROOT", str(tmp_path / "files"))
    assert image_url(served) == "http://127.0.0.1:4201/shards/synthetic/contact%20sheet.png"
    embedded = image_url(outside)
    assert embedded.startswith("data:image/jpeg;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(embedded.split(",", 1)[1])))
    assert picture.size == (1024, 256)  # downscaled to the embed limit, aspect kept
    monkeypatch.delenv("SMARTEDIT_FILES_URL")
    assert image_url(served).startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("message,echoed", [
    ("Created task run 'shard-0' for task 'shard_task'", False),
    ("Finished in state Completed()", False),
    ("Flow run 'mini-termite' submitted to infrastructure", False),
    ("refcoco-train-000000.tar: built (16 kept, 0 rejected)", True),
    ("stage-2 training steps 3/4: step 3 loss 1.2", True),
])
def test_the_terminal_echo_skips_engine_bookkeeping(message, echoed):
    from flows.stack import _NOISE

    assert (not _NOISE.match(message)) is echoed
