"""Shared pytest configuration: corpus locations and hypothesis profiles."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from .support.shared import shared_dir

#: Device fixtures: every driver/library test runs over each registered transport
#: (in-process model, vfio-user server process, VFIO over the fake kernel interface).
pytest_plugins = ["tests.devices", "tests.vfio_devices"]

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CONFORMANCE = shared_dir("conformance")
BENCH = shared_dir("bench")


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The shared conformance corpus (tests that need it fail loudly when it is missing)."""
    assert CONFORMANCE is not None, "../shared/conformance not found beside the checkout"
    return CONFORMANCE


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    """The shared bench programs."""
    assert BENCH is not None, "../shared/bench not found beside the checkout"
    return BENCH
