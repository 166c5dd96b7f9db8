"""Socket helpers of the adapters: binding UDP and TCP sockets, buffers, the DF bit, the local address towards a
client, the IPv6 probe.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, NamedTuple

from pyturn.wire.message import Address

log = logging.getLogger(__name__)



DRAIN_BATCH = 64
MAX_DATAGRAM = 65535
_MAX_BUFFER = 1 << 30  # setsockopt takes a C int; Linux halves INT_MAX anyway
# Linux values (<asm-generic/socket.h>); the socket module does not name them
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RESERVED_BUFFER = 4096  # receive buffer of a held reserved port (the kernel's minimum applies)
LISTEN_BACKLOG = 1024
# Linux values; the socket module only names some of them on some builds.
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_DO = getattr(socket, "IPV6_PMTUDISC_DO", 2)
_IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
ROUTE_PROBE = {socket.AF_INET: ("192.0.2.1", 9), socket.AF_INET6: ("2001:db8::1", 9)}
def plain_address(address: Any) -> Address:
    """(host, port) from what the socket layer gives (IPv6 adds flowinfo and scope id)."""
    return (address[0], address[1])


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def uri_host(host: str) -> str:
    """RFC 7065 §3.1 host: IPv6 literals in brackets; a wildcard bind is reached through loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def local_address_towards(family: int, destination: Address) -> str:
    """The local IP the kernel would use to reach `destination` (a connect() on UDP sends nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((destination[0], destination[1] or 9))
        host: str = probe.getsockname()[0]
        return host


class SocketBuffers(NamedTuple):
    """SO_RCVBUF and SO_SNDBUF to ask for, in bytes; 0 leaves the kernel's default."""

    receive: int
    send: int


_BUFFER_OPTIONS = (
    ("receive", socket.SO_RCVBUF, _SO_RCVBUFFORCE, "net.core.rmem_max"),
    ("send", socket.SO_SNDBUF, _SO_SNDBUFFORCE, "net.core.wmem_max"),
)


def set_buffers(sock: socket.socket, buffers: SocketBuffers) -> list[str]:
    """Ask for the buffer sizes; as root with SO_RCVBUFFORCE/SO_SNDBUFFORCE, which ignore the kernel's caps.

    Returns what fell short, one text per buffer naming the sysctl that capped it (empty: all granted). Linux
    doubles the value asked for (the bookkeeping overhead) and getsockopt reads back the doubled value; anything
    below twice the request was capped by net.core.rmem_max / wmem_max.
    """
    shortfalls = []
    forcing = os.geteuid() == 0
    for name, option, force, limit in _BUFFER_OPTIONS:
        wanted = min(getattr(buffers, name), _MAX_BUFFER)
        if not wanted:
            continue
        try:
            if forcing:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, wanted)
                except OSError:  # no CAP_NET_ADMIN after all (a container): the capped request below
                    sock.setsockopt(socket.SOL_SOCKET, option, wanted)
            else:
                sock.setsockopt(socket.SOL_SOCKET, option, wanted)
            granted = sock.getsockopt(socket.SOL_SOCKET, option)
        except OSError:
            continue
        if granted < 2 * wanted:
            shortfalls.append(f"{name} buffer {granted // 2} bytes of the {wanted} asked for (capped by {limit}; "
                              f"raise it with sysctl -w {limit}={wanted}, or start pyturn as root)")
    return shortfalls


def set_dont_fragment(sock: socket.socket, family: int) -> bool:
    """RFC 8656 §7.2 DONT-FRAGMENT: set DF on everything the relay sends (path-MTU discovery 'do').

    False when the kernel refuses: the core then answers 420, never an allocation that silently fragments."""
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_DONTFRAG, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
    except OSError as error:
        log.debug("could not set DF on a relay socket: %s", error)
        return False
    return True


def send_dont_fragment(sock: socket.socket, data: bytes, peer: Address) -> bool:
    """Send one datagram with DF set (RFC 8656 §11.3) from a socket that does not set it on everything: the
    path-MTU mode is switched for this datagram and back. False when DF cannot be set: the datagram is dropped."""
    if sock.family == socket.AF_INET6:
        level, option, on = socket.IPPROTO_IPV6, _IPV6_DONTFRAG, 1
    else:
        level, option, on = socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO
    try:
        previous = sock.getsockopt(level, option)
        sock.setsockopt(level, option, on)
    except OSError as error:
        log.debug("could not set DF for one datagram: %s", error)
        return False
    try:
        sock.sendto(data, peer)
    except OSError:
        return False
    finally:
        try:
            sock.setsockopt(level, option, previous)
        except OSError:
            pass
    return True


def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound at (host, port); the caller sizes its buffers (Runtime.size_buffers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # No SO_REUSEADDR: on Linux it lets two UDP sockets that both set it share a port, so a second server
        # (or another process's relay) would bind "successfully" and steal datagrams; UDP has no TIME_WAIT.
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock

def has_ipv6() -> bool:
    """Whether this host can bind IPv6 loopback at all (a kernel without IPv6, or with it disabled, cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_stream(
    host: str, port: int, *, reuse_port: bool = False, backlog: int | None = LISTEN_BACKLOG
) -> socket.socket:
    """A listening, non-blocking TCP socket (IPv6 only on IPv6 addresses; SO_REUSEADDR for TIME_WAIT); with
    backlog None bound only, for connecting out from that address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock

