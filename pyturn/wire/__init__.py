"""The STUN/TURN wire format: messages, attribute codecs, integrity, ChannelData and stream framing. Pure."""
