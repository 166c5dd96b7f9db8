"""The sans-IO TURN/STUN server (docs/architecture.md "Sans-IO contract"): no sockets, clock, logging or files."""
