"""Prototype of issue 14's syscall-batching lever: is recvmmsg/sendmmsg through ctypes, or UDP GSO/GRO through
sendmsg/recvmsg control messages, cheaper per datagram than one recvfrom/sendto each, from pure Python?

    python -m benchmarks.syscall_batching --count 200000 --sizes 170,1200

Linux only; loopback only; no server: one process, two sockets, CPU time (user + system) of this process per
datagram for each way of moving `count` datagrams. Send side: sendto per datagram, sendmmsg in batches of
`batch` (the destination address of every message packed into the ctypes array, as a relay would have to),
sendmsg with UDP_SEGMENT (GSO: one call, `batch` equal-sized datagrams to one destination). Receive side:
recvfrom per datagram, recvmmsg in batches (addresses unpacked back to (host, port) as the relay needs them),
recvmsg with UDP_GRO (datagrams of one flow coalesced, split by the gso_size control message).
Results are in benchmarks/README.md "Levers".
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import struct
import time
from collections.abc import Callable

SOL_UDP = 17
UDP_SEGMENT = 103  # <linux/udp.h>
UDP_GRO = 104
MSG_DONTWAIT = 0x40

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_uint16), ("addr", ctypes.c_uint32),
                ("zero", ctypes.c_char * 8)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IoVec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int]
_libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]


def _pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # capped by net.core.rmem_max
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sender.bind(("127.0.0.1", 0))
    return sender, receiver


def _drain(receiver: socket.socket) -> int:
    receiver.setblocking(False)
    got = 0
    while True:
        try:
            receiver.recv(65536)
        except BlockingIOError:
            return got
        got += 1


def _cpu(work: Callable[..., int], *arguments: object) -> tuple[float, int]:
    start = time.process_time()
    done = work(*arguments)
    return time.process_time() - start, done


class Batches:
    """Preallocated ctypes arrays for `batch` messages of up to `size` bytes each."""

    def __init__(self, batch: int, size: int) -> None:
        self.batch = batch
        self.buffers = [ctypes.create_string_buffer(max(size, 65536) if size == 0 else size) for _ in range(batch)]
        self.iovecs = (IoVec * batch)()
        self.names = (SockaddrIn * batch)()
        self.messages = (MMsgHdr * batch)()
        for i in range(batch):
            self.iovecs[i].base = ctypes.cast(self.buffers[i], ctypes.c_void_p)
            self.iovecs[i].length = size
            header = self.messages[i].hdr
            header.name = ctypes.addressof(self.names[i])
            header.namelen = ctypes.sizeof(SockaddrIn)
            header.iov = ctypes.pointer(self.iovecs[i])
            header.iovlen = 1


def send_each(sender: socket.socket, payload: bytes, count: int, destination: tuple[str, int]) -> int:
    sendto = sender.sendto
    for _ in range(count):
        sendto(payload, destination)
    return count


def send_mmsg(sender: socket.socket, payload: bytes, count: int, destination: tuple[str, int]) -> int:
    batches = Batches(32, len(payload))
    fd = sender.fileno()
    host = struct.unpack("=I", socket.inet_aton(destination[0]))[0]
    port = socket.htons(destination[1])
    sent = 0
    while sent < count:
        n = min(batches.batch, count - sent)
        for i in range(n):  # what a relay must do per datagram: its payload and its destination
            ctypes.memmove(batches.buffers[i], payload, len(payload))
            name = batches.names[i]
            name.family = socket.AF_INET
            name.port = port
            name.addr = host
        result = _libc.sendmmsg(fd, batches.messages, n, 0)
        if result < 0:
            raise OSError(ctypes.get_errno(), "sendmmsg")
        sent += result
    return sent


def send_gso(sender: socket.socket, payload: bytes, count: int, destination: tuple[str, int]) -> int:
    segment = struct.pack("=H", len(payload))
    batch = max(1, min(32, 65000 // len(payload)))
    joined = payload * batch
    control = [(SOL_UDP, UDP_SEGMENT, segment)]
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        sender.sendmsg([joined if n == batch else payload * n], control, 0, destination)
        sent += n
    return sent


def receive_each(receiver: socket.socket, count: int) -> int:
    recvfrom = receiver.recvfrom
    got = 0
    while got < count:
        try:
            recvfrom(65535)
        except BlockingIOError:
            break
        got += 1
    return got


def receive_mmsg(receiver: socket.socket, count: int, size: int) -> int:
    batches = Batches(64, size)
    fd = receiver.fileno()
    got = 0
    while got < count:
        for i in range(batches.batch):
            batches.messages[i].hdr.namelen = ctypes.sizeof(SockaddrIn)
        result = _libc.recvmmsg(fd, batches.messages, batches.batch, MSG_DONTWAIT, None)
        if result <= 0:
            break
        for i in range(result):  # what a relay needs per datagram: the bytes and the source as (host, port)
            name = batches.names[i]
            _source = (socket.inet_ntoa(struct.pack("=I", name.addr)), socket.ntohs(name.port))
            _data = batches.buffers[i].raw[: batches.messages[i].len]
        got += result
    return got


def receive_gro(receiver: socket.socket, count: int) -> int:
    receiver.setsockopt(SOL_UDP, UDP_GRO, 1)
    space = socket.CMSG_SPACE(4)
    got = 0
    while got < count:
        try:
            data, ancillary, _flags, _source = receiver.recvmsg(65535, space)
        except BlockingIOError:
            break
        size = len(data)
        for level, kind, value in ancillary:
            if level == SOL_UDP and kind == UDP_GRO:
                size = struct.unpack("=i", value[:4])[0]
        for start in range(0, len(data), size or 1):
            _segment = data[start : start + size]
            got += 1
    return got


CHUNK = 5000  # datagrams in flight at once: within the receiver's buffer, drained between chunks (not counted)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.syscall_batching")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--sizes", default="170,1200")
    arguments = parser.parse_args()
    count = arguments.count
    senders: list[tuple[str, Callable[..., int]]] = [
        ("sendto each", send_each), ("sendmmsg x32 (ctypes)", send_mmsg), ("sendmsg UDP_SEGMENT (GSO)", send_gso)]
    for size in (int(s) for s in arguments.sizes.split(",")):
        payload = b"x" * size
        print(f"\n{size}-byte datagrams, {count} each, CPU µs per datagram (user+system of this process):")
        for name, sender_way in senders:
            sender, receiver = _pair()
            with sender, receiver:
                spent = 0.0
                for _ in range(count // CHUNK):
                    spent += _cpu(sender_way, sender, payload, CHUNK, receiver.getsockname())[0]
                    _drain(receiver)
                print(f"  send    {name:34} {spent / count * 1e6:6.2f}")
        receivers: list[tuple[str, Callable[..., int], tuple[object, ...], Callable[..., int]]] = [
            ("recvfrom each", receive_each, (), send_each),
            ("recvmmsg x64 (ctypes)", receive_mmsg, (size,), send_each),
            ("recvmsg UDP_GRO, plain sender", receive_gro, (), send_each),
            ("recvmsg UDP_GRO, GSO sender", receive_gro, (), send_gso),
        ]
        for name, receiver_way, extra, feeder in receivers:
            sender, receiver = _pair()
            with sender, receiver:
                receiver.setblocking(False)
                spent = 0.0
                total = 0
                for _ in range(count // CHUNK):
                    feeder(sender, payload, CHUNK, receiver.getsockname())
                    used, got = _cpu(receiver_way, receiver, CHUNK, *extra)
                    spent += used
                    total += got
                print(f"  receive {name:34} {spent / max(total, 1) * 1e6:6.2f}   ({total} of {count} received)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
