"""`python -m pyturn.probe [-t TIMEOUT] [--tcp] HOST [PORT]`: the health-check command, kept at this path for the
Docker HEALTHCHECK and monitoring that call it; the probe itself is pyturn.service.probe."""

from pyturn.service.probe import main

if __name__ == "__main__":
    raise SystemExit(main())
