"""The rule the deployment tests follow without root or tools: skip locally, fail under CI (any casing)."""

from __future__ import annotations

import pytest
from netns import unavailable
from requirements import under_ci


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("True", True), ("TRUE", True), ("1", True),
                                                  ("false", False), ("0", False), ("", False), (None, False)])
def test_under_ci_reads_ci_in_any_casing(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert under_ci() is expected


def test_unavailable_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        unavailable("no root")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        unavailable("no root")
