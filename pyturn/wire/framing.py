"""TURN ChannelData (RFC 8656 §12) and TCP/TLS stream framing, defined once for the core and the adapters'
fast paths.
"""

from __future__ import annotations

from pyturn.errors import StunEncodeError
from pyturn.wire.attributes import _fail
from pyturn.wire.message import _PADDING, _TYPE_LENGTH, HEADER_SIZE, _pad_len

MIN_CHANNEL = 0x4000  # RFC 8656 §12: the first two bits of ChannelData are 01 (reTurn also takes 10/11)
CHANNEL_HEADER = _TYPE_LENGTH
"""RFC 8656 §12.4 ChannelData header: CHANNEL NUMBER, LENGTH (16 bits each). The adapters' fast paths pack and
unpack it directly."""
CHANNEL_PADDING = _PADDING
"""The zero bytes that pad a ChannelData payload of length n to a multiple of 4 over TCP/TLS: CHANNEL_PADDING[n % 4]
(RFC 8656 §12.5)."""


def encode_channel_data(channel: int, payload: bytes, *, pad: bool = False) -> bytes:
    """ChannelData message (RFC 8656 §12.4); pad=True adds the zero padding required over TCP/TLS."""
    if not MIN_CHANNEL <= channel <= 0xFFFF or len(payload) > 0xFFFF:
        raise StunEncodeError(f"ChannelData channel 0x{channel:x} with {len(payload)} bytes")
    header = CHANNEL_HEADER.pack(channel, len(payload))
    if pad:
        return b"".join((header, payload, CHANNEL_PADDING[len(payload) % 4]))
    return header + payload


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    """(channel, payload) of a ChannelData message; bytes past LENGTH (padding) are ignored."""
    if len(data) < 4:
        raise _fail("ChannelData shorter than its 4-byte header")
    channel, length = CHANNEL_HEADER.unpack_from(data)
    if channel < MIN_CHANNEL:
        raise _fail(f"channel number 0x{channel:04x} is not a ChannelData channel")
    if len(data) < 4 + length:
        raise _fail(f"ChannelData of {len(data)} bytes shorter than its length {length}")
    return channel, bytes(data[4 : 4 + length])


class StreamFramer:
    """Splits a TCP/TLS byte stream into STUN messages and ChannelData frames (RFC 8656 §12.5, RFC 6062).

    channel_padding=True consumes the RFC padding after ChannelData (it is not part of the returned
    frame); False expects none, as reTurn and its client send.
    """

    __slots__ = ("_buffer", "_channel_padding", "_max_frame")

    def __init__(self, *, channel_padding: bool = True, max_frame: int = 65535 + 20) -> None:
        self._channel_padding = channel_padding
        self._max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def drain(self) -> bytes:
        """Take the bytes not yet returned as a frame (a stream that stops being framed, RFC 6062 §5.4)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def feed(self, data: bytes) -> list[bytes]:
        """Append data; return every frame now complete, in order. Oversize -> StunDecodeError.

        Each frame is copied once: sliced from `data` itself while nothing is buffered (a read of whole frames,
        the common case; a read that is exactly one frame is returned as is), else from a view of the buffer."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view = memoryview(buffer)
        else:
            view = memoryview(data)
        try:
            frames, pos = self._split(view)
        finally:
            view.release()
        if buffer:
            if pos:
                del buffer[:pos]
        elif pos < len(data):
            buffer += data[pos:] if pos else data
        return frames

    def _split(self, view: memoryview) -> tuple[list[bytes], int]:
        frames: list[bytes] = []
        available = len(view)
        whole = view.obj if isinstance(view.obj, bytes) else None
        pos = 0
        while available - pos >= 4:
            length = (view[pos + 2] << 8) | view[pos + 3]
            if view[pos] & 0xC0 == 0:
                frame_size = total = HEADER_SIZE + length
            else:
                frame_size = total = 4 + length
                if self._channel_padding:
                    total = 4 + _pad_len(length)
            if total > self._max_frame:
                raise _fail(f"stream frame of {total} bytes exceeds {self._max_frame}")
            if available - pos < total:
                break
            if whole is not None:
                frames.append(whole[pos : pos + frame_size])
            else:
                frames.append(view[pos : pos + frame_size].tobytes())
            pos += total
        return frames, pos
