"""Shared fixtures. Keep this file small: area-specific fixtures live beside their tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Prefect writes under PREFECT_HOME even on import; keep it out of the user's home and off any server.
os.environ.setdefault("PREFECT_HOME", str(Path(__file__).resolve().parents[1] / ".prefect" / "pytest"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (≈9 s to start, so never per test)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def samples_seed0(tmp_path_factory):
    """``make_samples(seed=0)`` once per session (≈7 s each time it was regenerated per module). Shared and
    read-only: its files are chmod 0444, so a test that writes into it fails loudly; such a test takes
    ``samples_copy`` instead."""
    from pipeline.samples import make_samples

    samples = make_samples(tmp_path_factory.mktemp("samples") / "seed0", seed=0)
    for path in samples.root.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    return samples


@pytest.fixture()
def samples_copy(samples_seed0, tmp_path):
    """A private, writable copy of the session's sample set (copy-on-write for tests that modify files)."""
    import dataclasses
    import shutil

    root = tmp_path / "samples"
    shutil.copytree(samples_seed0.root, root)
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    moved = {}
    for f in dataclasses.fields(samples_seed0):
        value = getattr(samples_seed0, f.name)
        if isinstance(value, Path) and value.is_relative_to(samples_seed0.root):
            moved[f.name] = root / value.relative_to(samples_seed0.root)
    return dataclasses.replace(samples_seed0, **moved)


@pytest.fixture(scope="module")
def s3():
    """A real S3-compatible server (moto, tests/s3_server.py) for one test module, with the bucket
    ``s3_server.BUCKET``; yields (s3fs filesystem, endpoint URL). AWS_* are set in the environment meanwhile."""
    from s3_server import BUCKET, moto_server

    mp = pytest.MonkeyPatch()
    with moto_server(mp) as endpoint:
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        yield fs, endpoint
    mp.undo()
