"""Fixtures shared by the tests of the benchmark scripts in ``bench/``."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def bench_path():
    """``bench/`` importable for the test (its scripts import each other as top-level modules)."""
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))
