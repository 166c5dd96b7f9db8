"""`python -m pyturn.probe [-t TIMEOUT] [--tcp] HOST [PORT]`: one STUN Binding request, the mapped address printed.

Exit status 0 when a Binding success response arrived, 1 on timeout, an error response or a network error, 2
for bad arguments. Meant for health checks (Docker HEALTHCHECK) and quick manual tests; no credentials needed,
as Binding is answered without authentication (RFC 8489 §10, docs/compatibility.md "Authentication").
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence

from pyturn.errors import PyturnError, StunDecodeError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import HEADER_SIZE, Attr, Message, MessageClass, Method

DEFAULT_PORT = 3478
DEFAULT_TIMEOUT = 3.0
INITIAL_RTO = 0.5  # RFC 8489 §6.2.1: retransmit over UDP, doubling each time
EXIT_FAILED = 1


class ProbeError(PyturnError):
    """The probe did not get a Binding success response."""


def binding_request() -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))


def mapped_address(response: Message) -> tuple[str, int]:
    """XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 3489 servers)."""
    address = response.get(Attr.XOR_MAPPED_ADDRESS) or response.get(Attr.MAPPED_ADDRESS)
    if address is None:
        raise ProbeError("the Binding response carries no mapped address")
    host, port = address
    return str(host), int(port)


def _check_response(data: bytes, request: Message) -> Message | None:
    """The decoded answer to request, or None for something else (a stray or foreign datagram)."""
    try:
        response = decode_message(data)
    except StunDecodeError:
        return None
    if response.transaction_id != request.transaction_id or response.method != Method.BINDING:
        return None
    if response.msg_class == MessageClass.ERROR:
        code, reason = response.get(Attr.ERROR_CODE, (0, "no ERROR-CODE"))
        raise ProbeError(f"error response {code} {reason}")
    if response.msg_class != MessageClass.SUCCESS:
        return None
    return response


def _resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[socket.AddressFamily, tuple[str, int]]:
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
    except (OSError, IndexError) as error:
        raise ProbeError(f"cannot resolve {host}: {error}") from error
    return family, (str(address[0]), int(address[1]))


def probe_udp(host: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, int]:
    """Send a Binding request over UDP, retransmitting, until an answer or timeout. Returns the mapped address."""
    family, address = _resolve(host, port, socket.SOCK_DGRAM)
    request = binding_request()
    data = encode_message(request, fingerprint=True)
    deadline = time.monotonic() + timeout
    rto = INITIAL_RTO
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            while True:
                sock.send(data)
                resend_at = min(time.monotonic() + rto, deadline)
                rto *= 2
                while (remaining := resend_at - time.monotonic()) > 0:
                    sock.settimeout(remaining)
                    try:
                        answer = sock.recv(65535)
                    except TimeoutError:
                        break
                    response = _check_response(answer, request)
                    if response is not None:
                        return mapped_address(response)
                if time.monotonic() >= deadline:
                    raise ProbeError(f"no answer from {host} port {port}/udp within {timeout:g} s")
        except ProbeError:
            raise
        except OSError as error:
            raise ProbeError(f"{host} port {port}/udp: {error.strerror or error}") from error


def probe_tcp(host: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, int]:
    """Send a Binding request over TCP (RFC 8489 §6.2.2) and read one framed answer."""
    family, address = _resolve(host, port, socket.SOCK_STREAM)
    request = binding_request()
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(encode_message(request, fingerprint=True))
            header = _read_exactly(sock, HEADER_SIZE, deadline)
            body = _read_exactly(sock, int.from_bytes(header[2:4], "big"), deadline)
        except TimeoutError as error:
            raise ProbeError(f"no answer from {host} port {port}/tcp within {timeout:g} s") from error
        except OSError as error:
            raise ProbeError(f"{host} port {port}/tcp: {error.strerror or error}") from error
    response = _check_response(header + body, request)
    if response is None:
        raise ProbeError("the answer is not a Binding response to our request")
    return mapped_address(response)


def _read_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProbeError("the server closed the connection")
        data += chunk
    return bytes(data)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyturn.probe",
                                     description="Send one STUN Binding request and print the mapped address.")
    parser.add_argument("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--tcp", action="store_true", help="use TCP instead of UDP")
    parser.add_argument("host")
    parser.add_argument("port", nargs="?", type=int, default=DEFAULT_PORT)
    arguments = parser.parse_args(argv)
    if not 0 < arguments.port < 65536 or arguments.timeout <= 0:
        parser.error("the port must be 1..65535 and the timeout positive")
    probe = probe_tcp if arguments.tcp else probe_udp
    try:
        address = probe(arguments.host, arguments.port, arguments.timeout)
    except ProbeError as error:
        sys.stderr.write(f"probe: {error}\n")
        return EXIT_FAILED
    sys.stdout.write(f"{format_address(address)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
