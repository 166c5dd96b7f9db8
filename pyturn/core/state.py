"""The protocol state of one server process, shared by the request handlers (docs/architecture.md "Sans-IO contract").

`TurnServerCore` owns one `CoreState` and hands it to every handler; the handlers read and change its public
fields and call the two bookkeeping operations here. Nothing in it performs I/O: time comes in as ``now``.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyturn.config import Config
from pyturn.core.allocation import Allocation, FiveTuple
from pyturn.core.auth import NonceSigner, UserLookup
from pyturn.core.policy import PeerPolicy
from pyturn.core.ports import PortPool
from pyturn.core.ratelimit import SourceLimiter
from pyturn.core.redirect import Alternates
from pyturn.core.routes import RouteTable
from pyturn.core.stats import CoreStats
from pyturn.core.tcp_relay import TcpRelays
from pyturn.core.timers import DeadlineHeap, DeadlineKind
from pyturn.wire.message import Address

if TYPE_CHECKING:
    from pyturn.core.allocate import PendingAllocation
    from pyturn.core.reservations import Reservation


def software_value(config: Config) -> str | None:
    """The SOFTWARE attribute every answer carries, or None."""
    name = config.software_name
    if not name:
        return None
    if config.pad_software_name:
        # reTurn pads with spaces to a multiple of 4 for legacy clients (docs/compatibility.md "Keys").
        name += " " * (-len(name.encode("utf-8", "surrogateescape")) % 4)
    return name


class CoreState:
    """What the handlers share. Fields:

    * ``config``, ``users``, ``policy``: the configuration, the credential source, the peer policy (the last two
      are replaced whole on reload; the policy by default the one of the configuration);
    * ``secret``: the key of RESERVATION-TOKENs; ``nonces``: the NonceSigner of the 401/438 challenges;
    * ``software``: the SOFTWARE value, or None; ``alternate``: the RFC 5780 (primary, other) address pair, or None;
    * ``alternates``, ``draining``, ``over_bitrate``: where and when Allocates are redirected (docs/scaling.md);
    * ``allocations`` (by client 5-tuple), ``by_handle`` (by the adapter's relay handle), ``per_user`` (count per
      (username, realm)), ``pending`` (Allocates waiting for their relay socket, by OpenRelay token),
      ``reservations`` (by RESERVATION-TOKEN), ``ports`` (the relay port pool);
    * ``deadlines``: the one deadline heap; ``route_table``: the adapter's fast-path tables;
    * ``limiter``: the per-source limit of unauthenticated answers, or None; ``stats``: the counters;
    * ``data_tid_prefix``, ``data_tids``: the transaction ids of Data indications (prefix + counter), shared with
      the adapter's fast path (pyturn.core.routes), so every indication gets its own (RFC 8489 §6);
    * ``now``: the time of the call being handled, for deadlines set deep inside the handlers;
    * ``tcp_relays``: the RFC 6062 data connections of the TCP allocations (pyturn.core.tcp_relay), whose
      connection ids are drawn from ``randbytes``.
    """

    __slots__ = (
        "_policy",
        "allocations",
        "alternate",
        "alternates",
        "by_handle",
        "config",
        "data_tid_prefix",
        "data_tids",
        "deadlines",
        "draining",
        "limiter",
        "next_token",
        "nonces",
        "now",
        "over_bitrate",
        "pending",
        "per_user",
        "ports",
        "reservations",
        "route_table",
        "secret",
        "software",
        "stats",
        "tcp_relays",
        "users",
    )

    def __init__(
        self,
        config: Config,
        *,
        users: UserLookup,
        secret: bytes,
        nonces: NonceSigner,
        policy: PeerPolicy | None,
        ports: PortPool,
        data_tid_prefix: bytes,
        randbytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.config = config
        self.users = users
        self.secret = secret
        self.nonces = nonces
        self._policy = policy if policy is not None else PeerPolicy(
            denied=config.denied_peer_addresses,
            allowed=config.allowed_peer_addresses,
            relay_ports=(config.allocation_port_range_min, config.allocation_port_range_max),
        )
        self.ports = ports
        self.software = software_value(config)
        self.alternate: tuple[Address, Address] | None = None
        self.alternates = Alternates(config.alternate_servers, config.alternate_domain, config.tls_turn_port)
        # Set by the adapter (docs/scaling.md): while either is true new Allocates are redirected or refused.
        self.draining = False
        self.over_bitrate = False
        self.allocations: dict[FiveTuple, Allocation] = {}
        self.by_handle: dict[Any, Allocation] = {}
        self.per_user: dict[tuple[str, str], int] = {}
        self.pending: dict[int, PendingAllocation] = {}
        self.next_token = 0
        self.reservations: dict[bytes, Reservation] = {}
        self.deadlines = DeadlineHeap(self.entry_current)
        self.route_table = RouteTable()
        rate = config.unauthenticated_rate_limit
        self.limiter = SourceLimiter(rate) if rate > 0 else None
        self.stats = CoreStats()
        self.data_tid_prefix = data_tid_prefix
        self.data_tids = itertools.count(1)
        self.now = 0.0
        self.tcp_relays = TcpRelays(self, randbytes)

    @property
    def policy(self) -> PeerPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: PeerPolicy) -> None:
        # The fast path's indication routes were checked against the old policy (pyturn.core.routes).
        self._policy = policy
        for allocation in self.allocations.values():
            self.route_table.forget_peers(allocation)

    def add_pending(self, pending: PendingAllocation) -> int:
        """Keep an Allocate until its relay socket is bound; the token names it in OpenRelay and the answer."""
        self.next_token += 1
        self.pending[self.next_token] = pending
        return self.next_token

    def schedule_peers(self, allocation: Allocation, deadline: float) -> None:
        """A permission or channel now expires at `deadline`: make sure the allocation's PEERS entry is due by then."""
        if deadline < allocation.peers_scheduled:
            if allocation.peers_scheduled != float("inf"):
                self.deadlines.note_stale()  # the later entry is superseded
            allocation.peers_scheduled = deadline
            self.deadlines.push(deadline, DeadlineKind.PEERS, allocation)

    def entry_current(self, deadline: float, kind: DeadlineKind, owner: Any, item: Any) -> bool:
        """Whether a deadline-heap entry still describes its object (not refreshed since, not deleted)."""
        if kind is DeadlineKind.RESERVATION:
            reservation = self.reservations.get(item)
            return reservation is not None and reservation.expires == deadline
        allocation: Allocation = owner
        if self.allocations.get(allocation.five_tuple) is not allocation:
            return False
        if kind is DeadlineKind.RESPONSES:
            return bool(allocation.responses)
        if kind is DeadlineKind.ALLOCATION:
            return allocation.scheduled == deadline
        return allocation.peers_scheduled == deadline  # PEERS
