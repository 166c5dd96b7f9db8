"""Fuzz harness for the STUN/TURN wire codec (pyturn.wire).

One input is decoded as a STUN message, as ChannelData, and fed to StreamFramers in chunks. Only StunDecodeError may
escape a decoder; anything else is a crash. A decoded message must re-encode and decode to the same method, class,
transaction id and attributes (MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT aside: the encoder
appends those itself). Run a campaign with `python tests/fuzz/fuzz_codec.py corpus/codec/` (see README.md).
"""

from __future__ import annotations

import random
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzkit

with fuzzkit.instrumented_imports(__name__ == "__main__"):
    from pyturn.errors import StunDecodeError
    from pyturn.wire.codec import decode_message, encode_message
    from pyturn.wire.framing import StreamFramer, decode_channel_data, encode_channel_data
    from pyturn.wire.message import Attr, Message

TRAILERS = frozenset((Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT))
SMALL_FRAME_LIMIT = 256  # a framer with a low limit exercises the oversize-frame error


def check_stun(data: bytes) -> None:
    try:
        message = decode_message(data)
    except StunDecodeError:
        return
    assert message.raw == data
    encoded = encode_message(message)  # a decoded value always fits its attribute type again
    again = decode_message(encoded)
    assert (again.method, again.msg_class, again.transaction_id) == (
        message.method, message.msg_class, message.transaction_id
    )
    assert again.attributes == _without_trailers(message), (message.attributes, again.attributes)
    assert again.unknown_required == message.unknown_required
    assert encode_message(again) == encoded


def _without_trailers(message: Message) -> list[tuple[int, object]]:
    return [(attr, value) for attr, value in message.attributes if attr not in TRAILERS]


def check_channel_data(data: bytes) -> None:
    try:
        channel, payload = decode_channel_data(data)
    except StunDecodeError:
        return
    assert data[4 : 4 + len(payload)] == payload
    assert decode_channel_data(encode_channel_data(channel, payload)) == (channel, payload)
    padded = encode_channel_data(channel, payload, pad=True)
    assert len(padded) % 4 == 0 and decode_channel_data(padded) == (channel, payload)


def _frames_in_chunks(data: bytes, chunks: list[int], **options: object) -> tuple[list[bytes], bool, int]:
    """Frames returned while feeding data in the given chunk sizes; whether StunDecodeError ended it; bytes left."""
    framer = StreamFramer(**options)  # type: ignore[arg-type]
    frames: list[bytes] = []
    position = 0
    try:
        for size in chunks:
            frames.extend(framer.feed(data[position : position + size]))
            position += size
        frames.extend(framer.feed(data[position:]))
    except StunDecodeError:
        return frames, True, framer.buffered
    return frames, False, framer.buffered


def check_framer(data: bytes) -> None:
    rng = random.Random(zlib.crc32(data))
    for options in ({"channel_padding": True}, {"channel_padding": False},
                    {"channel_padding": True, "max_frame": SMALL_FRAME_LIMIT}):
        whole, whole_failed, whole_left = _frames_in_chunks(data, [], **options)
        chunks = [rng.choice((1, 1, 2, 3, 4, 7, 20, 64)) for _ in range(len(data) // 3 + 1)]
        pieces, pieces_failed, pieces_left = _frames_in_chunks(data, chunks, **options)
        assert whole_failed == pieces_failed
        if whole_failed:
            assert pieces[: len(whole)] == whole
            continue
        assert pieces == whole and pieces_left == whole_left
        consumed = len(data) - whole_left
        assert sum(len(frame) for frame in whole) <= consumed
        for frame in whole:
            if frame[0] & 0xC0:
                check_channel_data(frame)
            else:
                check_stun(frame)


def TestOneInput(data: bytes) -> None:
    check_stun(data)
    check_channel_data(data)
    check_framer(data)


if __name__ == "__main__":
    fuzzkit.fuzz_main(TestOneInput)
