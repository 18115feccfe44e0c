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
