"""A real S3-compatible HTTP server for tests: moto's server mode on 127.0.0.1, reached through s3fs with an
endpoint URL. Credentials are dummies set in the environment (the only place our code reads them from)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

BUCKET = "smartedit-test"  # created by the `s3` fixture (tests/conftest.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(monkeypatch_env):
    """Start ``python -m moto.server`` on a free port; set AWS_* in the environment through ``monkeypatch_env``
    (a ``pytest.MonkeyPatch``); yield the endpoint URL; stop the server."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.1)
        for name, value in {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                            "AWS_ENDPOINT_URL_S3": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch_env.setenv(name, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would keep another endpoint
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
