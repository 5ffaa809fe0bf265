"""Every runtime module declares its public names in ``__all__``, and they exist."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import oserve.runtime

MODULES = sorted(m.name for m in pkgutil.walk_packages(oserve.runtime.__path__, "oserve.runtime.")
                 if not m.ispkg)


@pytest.mark.parametrize("name", MODULES)
def test_module_exports_exist(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing objects: {missing}"


def test_runtime_never_imports_the_simulator():
    assert "oserve.sim" not in _imported_by_runtime()


def _imported_by_runtime() -> set[str]:
    import ast
    from pathlib import Path

    found = set()
    for path in Path(oserve.runtime.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(".".join(node.module.split(".")[:2]))
            elif isinstance(node, ast.Import):
                found.update(".".join(a.name.split(".")[:2]) for a in node.names)
    return found
