"""The layer contract (docs/architecture.md "Layers"), enforced on every pytest run, CI included.

import-linter checks the import graph (absolute, relative and `import pyturn.x` imports alike) against the
contracts in pyproject.toml: layers only import downwards, and the sans-IO core, the codec and the Config model
import no I/O module. What an import graph cannot see, a call of the `open` builtin or a dynamic import, is checked
here on the source.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
from pathlib import Path

import pytest
from requirements import require_module

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "pyturn"
PURE = [*sorted((PACKAGE / "core").glob("*.py")), *sorted((PACKAGE / "wire").glob("*.py")),
        PACKAGE / "config.py", PACKAGE / "errors.py"]
DYNAMIC_IMPORTS = {"__import__", "import_module", "exec", "eval"}


def test_architecture_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    importlinter_cli = require_module("importlinter.cli")
    monkeypatch.chdir(REPO)
    output = io.StringIO()
    # lint_imports configures logging in a way that disables every logger that exists already; later tests in the
    # same session that check pyturn's log lines need them back.
    loggers = [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    disabled = [logger.disabled for logger in loggers]
    try:
        with contextlib.redirect_stdout(output):
            exit_code = importlinter_cli.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True)
    finally:
        for logger, was_disabled in zip(loggers, disabled, strict=True):
            logger.disabled = was_disabled
    assert exit_code == 0, output.getvalue()
    assert "2 kept, 0 broken" in output.getvalue()


@pytest.mark.parametrize("path", PURE, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_architecture_pure_module_opens_no_file(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            assert name != "open", f"{path.name}:{node.lineno}: open() in a pure module"
            assert name not in DYNAMIC_IMPORTS, f"{path.name}:{node.lineno}: {name}() in a pure module"


# The receivers a module may read private attributes of: its own object, its class, and the other operand of a
# comparison method of the same class.
OWN_RECEIVERS = {"self", "cls", "other"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda path: path.name)
def test_architecture_core_module_reads_no_other_module_privates(path: Path) -> None:
    # docs/architecture.md "Layers": the handlers share a CoreState with public fields, not TurnServerCore's privates.
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            receiver = node.value.id if isinstance(node.value, ast.Name) else ast.unparse(node.value)
            assert receiver in OWN_RECEIVERS, f"{path.name}:{node.lineno}: {receiver}.{node.attr}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyturn"):
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            assert not private, f"{path.name}:{node.lineno}: imports {private} from {node.module}"


def test_architecture_pure_modules_are_all_listed() -> None:
    # A new pure package must be added to the forbidden contract and to PURE above.
    assert {path.parent.name for path in PURE if path.parent != PACKAGE} == {"core", "wire"}
    assert len(PURE) > 20


def test_architecture_public_api_exports_what_other_adapters_need() -> None:
    import pyturn

    for name in ("FiveTuple", "Transport", "StartupError", "ReloadResult", "Event", "TurnServerCore", "Action",
                 "SendToClient", "SendFrom", "SendToPeer", "OpenRelay", "CloseRelay", "ReleasePort", "RelayFailure"):
        assert name in pyturn.__all__, name
        assert getattr(pyturn, name) is not None, name
