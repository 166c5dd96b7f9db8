"""The relay fast path's route tables, owned by the core and read by the adapter (docs/architecture.md
"Adapter contract").

The contract, which tests/core/test_routes.py checks:

* ``RouteTable.for_listener(transport, server)`` is the client -> peer table of one listening address:
  ``{(client address, channel number): (relay handle, peer address)}``. It is the same dict object for the life of
  the core, so the adapter fetches it once (per UDP listener, per accepted TCP/TLS connection) and reads it on
  every packet.
* ``Allocation.channel_for_peer`` is the peer -> client table of one allocation: ``{peer address: channel number}``,
  the same dict object for the life of the allocation.
* The core mutates both in place and never rebinds them; the adapter only reads them (``get``, ``in``). An entry
  exists exactly for a channel binding that is live and whose peer IP holds a live permission. Expiry takes effect
  when the core's tick() runs (about once a second); a miss is never an error, the packet takes the slow path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyturn.core.allocation import Allocation, ChannelBinding, Transport
from pyturn.wire.message import Address

ClientRoutes = dict[tuple[Address, int], tuple[Any, Address]]
"""(client address, channel) -> (relay handle, peer address), for one listening address."""


class RouteTable:
    """Every listening address's client -> peer table, kept in step with the allocations' channel_for_peer."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[tuple[Transport, Address], ClientRoutes] = {}

    def for_listener(self, transport: Transport, server: Address) -> ClientRoutes:
        """The table of one listening address: created empty on first use, then always the same object."""
        return self._tables.setdefault((transport, server), {})

    def listeners(self) -> Iterable[ClientRoutes]:
        """Every listening address's table (for checks and metrics)."""
        return self._tables.values()

    def sync(self, allocation: Allocation, now: float) -> None:
        """Rewrite one allocation's entries after a permission or channel was installed, refreshed or lapsed."""
        five_tuple = allocation.five_tuple
        table = self.for_listener(five_tuple.transport, five_tuple.server)
        client = five_tuple.client
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
