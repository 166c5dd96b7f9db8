"""Writes the seed corpus: `python tests/fuzz/make_corpus.py` (deterministic; rerun after changing a harness's script).

corpus/codec/: the RFC 5769 vectors (tests/wire/vectors), valid Allocate/Refresh/CreatePermission/ChannelBind/Send/Data
messages and ChannelData, a classic RFC 3489 Binding, a TCP stream of several frames, and malformed messages.
corpus/core/: fuzz_core scripts (written with fuzzkit.ScriptWriter) for the usual client life cycles.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_core
import fuzzkit

from pyturn.wire.codec import encode_message
from pyturn.wire.framing import encode_channel_data
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

VECTORS = fuzzkit.TESTS_DIR / "wire" / "vectors"
KEY = long_term_key("u0", "reTurn", "pw")
TID = bytes(range(1, 13))


def _message(method: int, msg_class: MessageClass, *attributes: tuple[int, object]) -> Message:
    message = Message(method, msg_class, TID)
    for attr, value in attributes:
        message.add(attr, value)
    return message


def _authenticated(method: int, *attributes: tuple[int, object]) -> bytes:
    message = _message(method, MessageClass.REQUEST, *attributes)
    message.add(Attr.USERNAME, "u0").add(Attr.REALM, "reTurn").add(Attr.NONCE, "abcdef0123456789")
    return encode_message(message, integrity_key=KEY, fingerprint=True)


def codec_seeds() -> dict[str, bytes]:
    seeds = {
        f"rfc5769-{path.stem.removeprefix('rfc5769_')}": bytes.fromhex(path.read_text(encoding="ascii"))
        for path in sorted(VECTORS.glob("rfc5769_*.hex"))
    }
    peer = ("198.51.100.1", 5000)
    seeds.update({
        "allocate-unauthenticated": encode_message(
            _message(Method.ALLOCATE, MessageClass.REQUEST, (Attr.REQUESTED_TRANSPORT, 17))),
        "allocate-401": encode_message(_message(
            Method.ALLOCATE, MessageClass.ERROR, (Attr.ERROR_CODE, (401, "Unauthorized")),
            (Attr.REALM, "reTurn"), (Attr.NONCE, "abcdef0123456789"), (Attr.SOFTWARE, "pyturn"))),
        "allocate": _authenticated(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), (Attr.LIFETIME, 600),
                                   (Attr.EVEN_PORT, True), (Attr.DONT_FRAGMENT, True)),
        "allocate-success": encode_message(_message(
            Method.ALLOCATE, MessageClass.SUCCESS, (Attr.XOR_RELAYED_ADDRESS, ("192.0.2.1", 50000)),
            (Attr.LIFETIME, 600), (Attr.RESERVATION_TOKEN, b"12345678"),
            (Attr.XOR_MAPPED_ADDRESS, ("2001:db8::1", 40000))), integrity_key=KEY),
        "refresh": _authenticated(Method.REFRESH, (Attr.LIFETIME, 0)),
        "create-permission": _authenticated(Method.CREATE_PERMISSION, (Attr.XOR_PEER_ADDRESS, peer),
                                            (Attr.XOR_PEER_ADDRESS, ("2001:db8::2", 1))),
        "channel-bind": _authenticated(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, 0x4000),
                                       (Attr.XOR_PEER_ADDRESS, peer)),
        "send": encode_message(_message(Method.SEND, MessageClass.INDICATION, (Attr.XOR_PEER_ADDRESS, peer),
                                        (Attr.DATA, b"hello peer"))),
        "data": encode_message(_message(Method.DATA, MessageClass.INDICATION, (Attr.XOR_PEER_ADDRESS, peer),
                                        (Attr.DATA, b"hello client"))),
        "password-algorithms": encode_message(_message(
            Method.BINDING, MessageClass.ERROR, (Attr.ERROR_CODE, (401, "Unauthorized")),
            (Attr.PASSWORD_ALGORITHMS, ((1, b""), (2, b"abc"))), (Attr.PASSWORD_ALGORITHM, (2, b"")),
            (Attr.UNKNOWN_ATTRIBUTES, (0x0030, 0x0031)), (Attr.ADDRESS_ERROR_CODE, (1, 440, "family"))),
            integrity_sha256_key=KEY),
        "classic-binding": encode_message(Message(
            Method.BINDING, MessageClass.REQUEST, bytes(range(16)),
            [(Attr.CHANGE_REQUEST, 6), (Attr.XOR_MAPPED_ADDRESS, ("2001:db8::3", 9))])),
        "channel-data": encode_channel_data(0x4001, b"payload"),
        "channel-data-padded": encode_channel_data(0x7FFF, b"abcde", pad=True),
        "channel-data-empty": encode_channel_data(0x4000, b""),
    })
    seeds["tcp-stream"] = b"".join((seeds["allocate"], encode_channel_data(0x4000, b"xyz", pad=True),
                                    seeds["send"], encode_channel_data(0x4000, b"x")))
    allocate = seeds["allocate"]
    seeds.update({
        "malformed-truncated": allocate[:-3],
        "malformed-length": allocate[:2] + b"\xff\xfc" + allocate[4:],
        "malformed-fingerprint": allocate[:-1] + bytes([allocate[-1] ^ 1]),
        "malformed-attribute-overrun": allocate[:22] + b"\xff\xff" + allocate[24:],
        "malformed-top-bits": b"\xc0" + allocate[1:],
        "malformed-channel-data": b"\x40\x00\x00\x10abc",
        "malformed-address-family": b"\x01\x01\x00\x0c!\x12\xa4B" + TID
        + b"\x00\x20\x00\x08\x00\x03\x00\x01\x01\x02\x03\x04",
    })
    return seeds


Script = Callable[[fuzzkit.ScriptWriter], None]


def _op(writer: fuzzkit.ScriptWriter, operation: int, five_tuple: int = 0, user: int = 0) -> fuzzkit.ScriptWriter:
    last = len(fuzz_core.FIVE_TUPLES) - 1
    return (writer.int_in_range(operation, 0, fuzz_core.OPERATIONS - 1).int_in_range(five_tuple, 0, last)
            .int_in_range(user, 0, len(fuzz_core.USERS) - 1))


def _allocate(writer: fuzzkit.ScriptWriter, five_tuple: int, flags: int = 2, lifetime: int | None = None) -> None:
    _op(writer, 0, five_tuple).int_in_range(flags, 0, 255)
    if not flags & 1 and not flags & 2:
        writer.int_in_range(17, 0, 255)
    if flags & 16:
        writer.int_in_range(lifetime or 0, 0, 4000)
    if flags & 64:
        writer.int_in_range(1, 1, 3)


def _dance(writer: fuzzkit.ScriptWriter, five_tuple: int, flags: int = 2) -> None:
    _allocate(writer, five_tuple, flags)  # 401 with a nonce
    _allocate(writer, five_tuple, flags)  # authenticated


def _peer(writer: fuzzkit.ScriptWriter, peer: int) -> None:
    writer.int_in_range(peer, 0, len(fuzz_core.ALL_PEERS) - 1)


def _channel_bind(writer: fuzzkit.ScriptWriter, five_tuple: int, channel: int, peer: int) -> None:
    _op(writer, 3, five_tuple).int_in_range(channel, 0x3FFE, 0x8001)
    _peer(writer, peer)
    writer.int_in_range(2, 1, 2)


def _tick(writer: fuzzkit.ScriptWriter, seconds: int) -> None:
    _op(writer, 9).int_in_range(seconds, 0, 700).int_in_range(0, 0, 99)


def core_seeds() -> dict[str, bytes]:
    loopback = 2  # ALL_PEERS[2] is 127.0.0.1:5002, inside AllowedPeerAddresses

    def channel_life(writer: fuzzkit.ScriptWriter) -> None:
        writer.int_in_range(0, 0, len(fuzz_core.CONFIGS) - 1)
        _dance(writer, 0)
        _channel_bind(writer, 0, 0x4000, loopback)
        _op(writer, 5).int_in_range(0x4000, 0x4000, 0x4003).raw(b"to the peer" + b"\x00" * 37).boolean(False)
        _op(writer, 6).int_in_range(0, 0, 1)
        _peer(writer, loopback)
        writer.raw(b"to the client".ljust(48, b"."))
        _tick(writer, 200)
        _op(writer, 1).int_in_range(0, -1, 4000)  # Refresh LIFETIME 0

    def send_life(writer: fuzzkit.ScriptWriter) -> None:
        writer.int_in_range(0, 0, len(fuzz_core.CONFIGS) - 1)
        _dance(writer, 1, flags=2 | 16 | 128)
        _op(writer, 2, 1).int_in_range(2, 0, 3)
        _peer(writer, loopback)
        _peer(writer, 0)
        _op(writer, 4, 1)
        _peer(writer, loopback)
        writer.raw(b"send indication data".ljust(48, b"-"))
        _op(writer, 6).int_in_range(0, 0, 1)
        _peer(writer, loopback)
        writer.raw(b"data indication".ljust(48, b"+"))
        _op(writer, 13, 1)  # retransmission
        _tick(writer, 700)

    def tcp_close(writer: fuzzkit.ScriptWriter) -> None:
        writer.int_in_range(0, 0, len(fuzz_core.CONFIGS) - 1)
        _dance(writer, 1)
        _dance(writer, 4, flags=2 | 4 | 8)  # even port with a reservation
        _allocate(writer, 7, flags=2 | 32)
        _op(writer, 10, 1)
        _channel_bind(writer, 4, 0x4001, loopback)
        _channel_bind(writer, 4, 0x4002, loopback)

    def deferred_relays(writer: fuzzkit.ScriptWriter) -> None:
        writer.int_in_range(3, 0, len(fuzz_core.CONFIGS) - 1)
        _op(writer, 11).int_in_range(1, 0, 4)
        _dance(writer, 0)
        _dance(writer, 3)
        _op(writer, 11).int_in_range(2, 0, 4).int_in_range(0, 0, 1).int_in_range(0, 0, 3)
        _op(writer, 11).int_in_range(0, 0, 4).int_in_range(0, 0, 0).int_in_range(1, 0, 3)
        _dance(writer, 6, flags=0 | 64)

    def raw_requests(writer: fuzzkit.ScriptWriter) -> None:
        writer.int_in_range(2, 0, len(fuzz_core.CONFIGS) - 1)
        _allocate(writer, 2)
        _op(writer, 12, 2).int_in_range(0, 0, len(fuzz_core.METHODS) - 1).int_in_range(2, 0, 4)
        writer.int_in_range(1, 0, len(fuzz_core.ODD_ATTRIBUTES) - 1).int_in_range(4, 0, 24).raw(b"\x11\x00\x00\x00")
        writer.int_in_range(0, 0, len(fuzz_core.ODD_ATTRIBUTES) - 1).int_in_range(4, 0, 24).raw(b"\x00\x00\x02\x58")
        writer.boolean(True)
        _op(writer, 13, 2)  # retransmission: answered from the response cache
        _op(writer, 7, 2).int_in_range(8, 0, 96).raw(b"\x00\x01\x00\x00!\x12\xa4B")

    scripts: dict[str, Script] = {"channel-life": channel_life, "send-life": send_life, "tcp-close": tcp_close,
                                  "deferred-relays": deferred_relays, "raw-requests": raw_requests}
    seeds: dict[str, bytes] = {}
    for name, script in scripts.items():
        writer = fuzzkit.ScriptWriter()
        script(writer)
        seeds[name] = writer.build()
    return seeds


def write(directory: Path, seeds: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        digest = hashlib.sha1(data).hexdigest()[:8]
        (directory / f"seed-{name}-{digest}").write_bytes(data)


def main() -> None:
    for name, seeds in (("codec", codec_seeds()), ("core", core_seeds())):
        directory = fuzzkit.CORPUS_DIR / name
        for old in directory.glob("seed-*"):
            old.unlink()
        write(directory, seeds)
        print(f"{directory}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
