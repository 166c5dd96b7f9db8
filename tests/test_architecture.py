"""The pure core imports no I/O (architecture.md convention 1): checked on the source, not on sys.modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PURE_MODULES = ["stun", "auth", "userdb", "policy", "allocation", "ports", "ratelimit", "core", "config", "errors",
                "stats", "sharedsecret",
                "impairment", "faults"]
BANNED = {"asyncio", "socket", "ssl", "signal", "time", "select", "selectors", "threading", "subprocess", "uvloop",
          "prometheus_client"}
PACKAGE = Path(__file__).resolve().parent.parent / "pyturn"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_architecture_pure_module_imports_no_io(module: str) -> None:
    assert not _imported_modules(PACKAGE / f"{module}.py") & BANNED


@pytest.mark.parametrize("module", PURE_MODULES)
def test_architecture_pure_module_imports_only_pure_pyturn_modules(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyturn."):
            assert node.module.removeprefix("pyturn.") in PURE_MODULES, node.module
