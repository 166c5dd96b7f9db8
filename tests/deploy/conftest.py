"""Fixtures of the deployment tests; the rig itself lives in handbook.py and netns.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from handbook import Deployment, handbook_deployment


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The handbook deployment, one per test module (default peer policy: no AllowedPeerAddresses)."""
    with handbook_deployment(tmp_path_factory.mktemp("deploy")) as built:
        yield built
