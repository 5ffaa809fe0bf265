"""The precision benchmarks' shared results writer, and the llama.cpp KV-cache bench end to end (tiny)."""

from __future__ import annotations

import json

import pytest


def test_results_are_written_as_json_and_a_markdown_table(tmp_path, bench_path):
    from results_table import markdown_table, write_results

    text = write_results(tmp_path / "r", {"x": 1}, "Title", ["a", "b"], [["1", "2"]], ["a note"])
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 1}
    assert (tmp_path / "r.md").read_text() == text
    assert text.splitlines() == ["# Title", "", "a note", "", "| a | b |", "|---|---|", "| 1 | 2 |"]
    with pytest.raises(ValueError, match="has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["1"]])


def test_llama_kv_cache_bench_measures_every_cache_type(tmp_path, bench_path):
    pytest.importorskip("llama_cpp")
    import llama_kv_cache_types as bench

    out = tmp_path / "kv"
    assert bench.main(["--prompts", "1", "--repeats", "1", "--max-tokens", "4", "--long-prompt-tokens",
                       "0", "--n-ctx", "256", "--out", str(out)]) == 0
    variants = json.loads(out.with_suffix(".json").read_text())["variants"]
    assert [v["llama_cache_type"] for v in variants.values()] == ["f16", "f16", "q8_0", "q4_0"]
    for v in variants.values():  # llama.cpp's reported buffer is n_ctx cells of the computed bytes/token
        assert v["kv_buffer_bytes_reported"] == pytest.approx(256 * v["kv_bytes_per_token_computed"],
                                                              rel=0.01)
    assert variants[bench.REFERENCE]["greedy_prefix_agreement"] == 1.0
