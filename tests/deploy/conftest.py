"""Fixtures of the deployment tests; the rig itself lives in handbook.py and netns.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from handbook import Deployment, handbook_deployment


@pytest.fixture(scope="module")
def deployment_config_changes() -> dict[str, object]:
    """Keys a test module adds to (or changes in) the handbook's config lines; none by default."""
    return {}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory,
               deployment_config_changes: dict[str, object]) -> Iterator[Deployment]:
    """The handbook deployment, one per test module (default peer policy: no AllowedPeerAddresses)."""
    with handbook_deployment(tmp_path_factory.mktemp("deploy"), deployment_config_changes) as built:
        yield built
