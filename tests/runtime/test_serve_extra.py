"""The ``serve`` extra is installed (required under CI; reported as a skip elsewhere)."""

from __future__ import annotations

import os

import pytest

from .conftest import missing_packages


def test_serve_extra_is_installed():
    missing = missing_packages()
    if missing and not os.environ.get("CI"):
        pytest.skip(f"runtime tests need pip install -e '.[serve]' (missing: {missing})")
    assert not missing, f"CI must install the serve extra: pip install -e '.[serve]' (missing {missing})"
