"""The package layers follow the data: each imports only from the layers before it."""

import ast
from pathlib import Path

import oserve

ORDER = ["common", "workload", "costmodel", "planner", "forecast", "switching", "sim", "runtime", "cli"]
# sim and runtime are siblings: both build on the planner, neither may import the other
FORBIDDEN = {("sim", "runtime"), ("runtime", "sim")}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("oserve."):
            yield node.module.split(".")[1], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("oserve."):
                    yield alias.name.split(".")[1], node.lineno


def test_layers_import_only_earlier_layers():
    root = Path(oserve.__file__).parent
    violations = []
    for layer in ORDER:
        for path in (root / layer).rglob("*.py") if (root / layer).exists() else []:
            for target, line in _imports(path):
                if target not in ORDER or target == layer:
                    continue
                later = ORDER.index(target) > ORDER.index(layer) and layer != "cli"
                if (layer, target) in FORBIDDEN or later:
                    violations.append(f"{path.relative_to(root)}:{line} imports oserve.{target}")
    assert not violations, "\n".join(violations)


def test_argparse_lives_only_in_the_cli_package():
    root = Path(oserve.__file__).parent
    users = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                users.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not users, "argparse outside oserve/cli: " + ", ".join(users)
