"""Provenance written next to results: the git revision of the code that produced them."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_revision() -> str:
    """HEAD of the checkout this package runs from, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
