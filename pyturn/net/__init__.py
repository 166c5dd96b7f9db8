"""The asyncio adapters: the runtime that performs the core's actions, the relay loops, sockets, TLS, metrics."""
