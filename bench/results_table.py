"""Writing a benchmark's results: its numbers as JSON and a Markdown table beside them.

Shared by the precision benchmarks (``kv_quant_error.py``, ``llama_kv_cache_types.py``): each builds its
result dict and its table rows, and ``write_results`` writes ``OUT.json`` and ``OUT.md`` and returns the
Markdown (the scripts print it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table; every row must have the header's number of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row {list(row)} has {len(row)} cells, the header {len(header)}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_results(out: str | Path, result: dict, title: str, header: Sequence[str],
                  rows: Iterable[Sequence[str]], notes: Sequence[str] = ()) -> str:
    """``OUT.json`` (``result``) and ``OUT.md`` (title, notes, table); returns the Markdown."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {title}", ""]
    for note in notes:
        lines += [note, ""]
    text = "\n".join(lines + markdown_table(header, rows)) + "\n"
    out.with_suffix(".md").write_text(text)
    return text
