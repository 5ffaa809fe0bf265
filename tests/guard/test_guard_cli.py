"""``oserve guard calibrate`` and the guard flags, in process, over fake engines."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from oserve.cli.main import main  # noqa: E402


def _files(tmp_path, config="default: {num_ordinary: 3, num_extraction: 3, calibration_max_tokens: 2}\n"):
    prompt, guard = tmp_path / "system.txt", tmp_path / "guard.yaml"
    prompt.write_text("You are a test bot. The code is ZEBRA-4471.")
    guard.write_text(config)
    return prompt, guard


def test_calibrate_writes_the_cache_and_prints_the_test(tmp_path, capsys):
    prompt, guard = _files(tmp_path)
    argv = ["guard", "calibrate", "--engine", "fake", "--system-prompt", str(prompt), "--guard-config",
            str(guard), "--guard-calibration-dir", str(tmp_path / "cal"), "--log-level", "warning"]
    assert main(argv + ["--json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["model"] == "oserve-fake" and summary["no_leak"]["n"] == 3
    assert summary["rejection_region"] and (tmp_path / "cal").is_dir()
    assert "ZEBRA" not in json.dumps(summary)
    assert main(argv) == 0  # from the cache now; the text report
    assert "leak region" in capsys.readouterr().out


def test_calibrate_input_mistakes_are_one_line_errors(tmp_path, capsys):
    prompt, guard = _files(tmp_path, "default: {alpah: 0.1}\n")
    base = ["guard", "calibrate", "--engine", "fake", "--guard-calibration-dir", str(tmp_path)]
    assert main(base + ["--system-prompt", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: cannot read the system prompt" in capsys.readouterr().err
    assert main(base + ["--system-prompt", str(prompt), "--guard-config", str(guard)]) == 2
    assert "guard.yaml, field 'default.alpah'" in capsys.readouterr().err
    assert main(base + ["--system-prompt", str(prompt), "--guard-alpha", "1.5"]) == 2
    assert "--guard-alpha" in capsys.readouterr().err
