"""Shared fixtures: the real bundled traces and catalogs (small enough to load in every test)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
    """The measured H100 operator and layer profiles (a copy ships in tests/data, so a plain clone runs
    the cost-model accuracy tests)."""
    return Path(__file__).resolve().parent / "data" / "profiles"
