"""What a test needs from the host, and what happens when it is missing: skip locally, fail under CI.

CI (the environment variable CI set to anything but "", "0", "false", "no" or "off", in any casing: CI=true,
CI=1, CI=True) provides every tool, package, address and privilege the suite uses, so there a missing one is a
failure, never a quiet skip. One helper for every such condition:

* ``require(condition, reason)`` inside a test (or at module level: a skip then covers the whole module);
* ``@pytest.mark.requires(condition, reason)`` on a test, or as ``pytestmark`` for a module (tests/conftest.py
  evaluates the mark before each test);
* ``require_module(name)`` instead of ``pytest.importorskip``.

Conditions CI cannot promise (a port another process happens to hold, an OpenSSL without TLS 1.1) stay plain
``pytest.skip``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

_NOT_CI = frozenset(("", "0", "false", "no", "off"))


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in _NOT_CI


def require(condition: object, reason: str, *, module_level: bool = False) -> None:
    """Nothing when `condition` holds; otherwise skip the test (locally) or fail it (under CI)."""
    if condition:
        return
    if under_ci():
        pytest.fail(f"{reason} (CI={os.environ.get('CI')}: what this test needs must be there)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_module(name: str) -> ModuleType:
    """Import a package a test needs (the CI-aware pytest.importorskip); usable at module level."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"python package {name} is not installed", module_level=True)
        raise AssertionError("unreachable") from None  # require() raised
