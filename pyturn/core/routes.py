"""The relay fast path's route tables, owned by the core and read by the adapter (docs/architecture.md
"Adapter contract").

The contract, which tests/core/test_routes.py checks:

* ``RouteTable.for_listener(transport, server)`` is the client -> peer table of one listening address:
  ``{(client address, channel number): (relay handle, peer address)}``. It is the same dict object for the life of
  the core, so the adapter fetches it once (per UDP listener, per accepted TCP/TLS connection) and reads it on
  every packet.
* ``Allocation.channel_for_peer`` is the peer -> client table of one allocation: ``{peer address: channel number}``,
  the same dict object for the life of the allocation.
* ``RouteTable.sends_for_listener(transport, server)`` is the Send indication table of one listening address:
  ``{(client address, XOR-PEER-ADDRESS attribute bytes): (relay handle, peer address)}``, the attribute being the
  12 bytes of pyturn.wire.indications.peer_attribute() (IPv4 peers only), looked up with the bytes of a Send
  indication that pyturn.wire.indications.parse_send() accepted. Same object for the life of the core. Only UDP
  allocations have entries: the UDP listener is the one adapter that reads this table (a TCP/TLS stream's Send
  indications take the slow path), so the table of a TCP or TLS listening address stays empty.
* ``Allocation.peer_attributes`` is the Data indication table of one allocation: ``{peer address: XOR-PEER-ADDRESS
  attribute bytes}``, the template of pyturn.wire.indications.DATA_INDICATION_HEAD; same object for the life of the
  allocation. The adapter builds a Data indication from it for a peer datagram that has no channel, with a
  transaction id of ``core.data_tid_prefix`` and ``next(core.data_tids)`` (unique per indication, RFC 8489 §6).
* The core mutates all four in place and never rebinds them; the adapter only reads them (``get``, ``in``). A
  channel entry exists exactly for a channel binding that is live and whose peer IP holds a live permission. An
  indication entry (both tables) exists only for an (IPv4 address, port) the core itself relayed a Send or Data
  indication to or from (the slow path, with every check: allocation, family, permission, docs/security.md "Peer
  policy"), at most MAX_LEARNED_PEERS per allocation, while the peer IP's permission lasts and until the peer
  policy changes. A Send indication with DONT-FRAGMENT takes the fast path only on a relay that sets DF on
  everything (an Allocate with DONT-FRAGMENT); otherwise the core decides (RFC 8656 §11.3).
* Expiry takes effect when the core's tick() runs (about once a second); a miss is never an error, the packet
  takes the slow path, which stays the reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyturn.core.allocation import Allocation, ChannelBinding, Transport
from pyturn.wire.indications import peer_attribute
from pyturn.wire.message import Address

MAX_LEARNED_PEERS = 64
"""Indication routes one allocation may hold (a client spraying peer ports must not grow memory without bound);
past it, indications to or from further peers stay on the slow path."""

ClientRoutes = dict[tuple[Address, int], tuple[Any, Address]]
"""(client address, channel) -> (relay handle, peer address), for one listening address."""
SendRoutes = dict[tuple[Address, bytes], tuple[Any, Address]]
"""(client address, XOR-PEER-ADDRESS attribute) -> (relay handle, peer address), for one listening address."""


class RouteTable:
    """Every listening address's client -> peer table, kept in step with the allocations' channel_for_peer."""

    __slots__ = ("_sends", "_tables")

    def __init__(self) -> None:
        self._tables: dict[tuple[Transport, Address], ClientRoutes] = {}
        self._sends: dict[tuple[Transport, Address], SendRoutes] = {}

    def for_listener(self, transport: Transport, server: Address) -> ClientRoutes:
        """The table of one listening address: created empty on first use, then always the same object."""
        return self._tables.setdefault((transport, server), {})

    def sends_for_listener(self, transport: Transport, server: Address) -> SendRoutes:
        """The Send indication table of one listening address: created empty on first use, then the same object."""
        return self._sends.setdefault((transport, server), {})

    def learn(self, allocation: Allocation, peer: Address) -> None:
        """The core relayed an indication to or from `peer` after every check: remember it for the fast path."""
        peers = allocation.peer_attributes
        if peer in peers or len(peers) >= MAX_LEARNED_PEERS:
            return
        attribute = peer_attribute(peer)
        if attribute is None:
            return
        peers[peer] = attribute
        five_tuple = allocation.five_tuple
        if five_tuple.transport is Transport.UDP:  # the only adapter with a Send indication fast path
            sends = self.sends_for_listener(Transport.UDP, five_tuple.server)
            sends[(five_tuple.client, attribute)] = (allocation.handle_for(peer[0]), peer)

    def forget_peers(self, allocation: Allocation, now: float | None = None) -> None:
        """Drop the learned indication routes whose peer IP lost its permission (all of them when now is None)."""
        peers = allocation.peer_attributes
        if not peers:
            return
        five_tuple = allocation.five_tuple
        sends = self._sends.get((five_tuple.transport, five_tuple.server), {})
        for peer in [p for p in peers if now is None or not allocation.has_permission(p[0], now)]:
            sends.pop((five_tuple.client, peers.pop(peer)), None)

    def listeners(self) -> Iterable[ClientRoutes]:
        """Every listening address's table (for checks and metrics)."""
        return self._tables.values()

    def sync(self, allocation: Allocation, now: float) -> None:
        """Rewrite one allocation's entries after a permission or channel was installed, refreshed or lapsed."""
        five_tuple = allocation.five_tuple
        table = self.for_listener(five_tuple.transport, five_tuple.server)
        client = five_tuple.client
        self.forget_peers(allocation, now)
        live = allocation.channel_for_peer
        live.clear()
        for channel, binding in allocation.channels.items():
            key = (client, channel)
            if binding.expires > now and allocation.has_permission(binding.peer[0], now):
                live[binding.peer] = channel
                table[key] = (allocation.handle_for(binding.peer[0]), binding.peer)
            else:
                table.pop(key, None)

    def drop_channels(self, allocation: Allocation, bindings: list[ChannelBinding]) -> None:
        """Forget lapsed channel bindings, which sync() no longer visits once they left allocation.channels."""
        five_tuple = allocation.five_tuple
        table = self.for_listener(five_tuple.transport, five_tuple.server)
        for binding in bindings:
            table.pop((five_tuple.client, binding.channel), None)

    def drop(self, allocation: Allocation) -> None:
        """Forget every entry of an allocation that is being deleted."""
        five_tuple = allocation.five_tuple
        table = self.for_listener(five_tuple.transport, five_tuple.server)
        for channel in allocation.channels:
            table.pop((five_tuple.client, channel), None)
        allocation.channel_for_peer.clear()
        self.forget_peers(allocation)
