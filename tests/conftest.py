"""Shared fixtures: the real bundled traces and catalogs (small enough to load in every test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def conv_trace():
    from oserve.workload import load_trace

    return load_trace("azure-conv")


@pytest.fixture(scope="session")
def conv_types(conv_trace):
    from oserve.workload import fit_request_types

    return fit_request_types(conv_trace, k=4, seed=0)


@pytest.fixture(scope="session")
def profiles_dir():
    if not SHARED.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared data at {SHARED}")
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED / "profiles"
