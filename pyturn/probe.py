"""`python -m pyturn.probe [-t TIMEOUT] [--tcp] HOST [PORT]`: the health-check command, kept at this path for the
Docker HEALTHCHECK and monitoring that call it; the probe itself is pyturn.ops.probe."""

from pyturn.ops.probe import main

if __name__ == "__main__":
    raise SystemExit(main())
