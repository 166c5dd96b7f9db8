"""Fixtures of the deployment tests; the rig itself lives in handbook.py, netns.py and chromium.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
from chromium import Chromium, chromium_in
from handbook import Deployment, handbook_deployment
from netns import READY_TIMEOUT, TURN_ADDRESS, Namespace

from pyturn.testing import TurnServerFactory, TurnServerFixture


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


class Site(Protocol):
    """What the Chromium fixture needs of a module's `deployment` (the handbook's, or a module's own)."""

    namespace: Namespace


@pytest.fixture(scope="module")
def chromium_in_namespace(deployment: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """Headless Chromium (chromium.py) inside the deployment's namespace, one per test module."""
    with chromium_in(deployment.namespace, tmp_path_factory.mktemp("chromium")) as chromium:
        yield chromium


@pytest.fixture
def namespaced_turn_servers(deployment: Deployment,
                            turn_servers: TurnServerFactory) -> Callable[..., TurnServerFixture]:
    """The ``turn_servers`` factory, with each server started inside the deployment's namespace.

    The embedded server's thread is started from a thread that joined the namespace (Namespace.call), so its
    sockets live there, where Chromium can reach them, and the test still drives it through the library API
    (expire_allocations(), stop()...). Call it with ``address=`` one of the namespace's addresses (default
    198.51.100.19, beside the handbook's `pyturn -c`, on an ephemeral port) and the factory's keyword arguments.
    No allow list: the default peer policy lets the server's own relays reach each other.
    """

    def start(address: str = TURN_ADDRESS, **options: Any) -> TurnServerFixture:
        options = {"turn_address": address, "allowed_peer_addresses": (), **options}
        return deployment.namespace.call(lambda: turn_servers(**options), READY_TIMEOUT + 5.0)

    return start
