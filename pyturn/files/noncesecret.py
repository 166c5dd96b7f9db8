"""NonceSecretFile: the secret that signs nonces, shared by instances that accept each other's nonces.

Format: one secret a line, at least MIN_SECRET_BYTES bytes (e.g. ``openssl rand -hex 32``); blank lines and lines
starting with ``#`` are ignored. The first secret signs new nonces; the others are still accepted, so a secret can
be rotated without a round of 438 answers: add the new one on top, reload every instance, drop the old one once
NonceLifetime has passed. docs/scaling.md explains what sharing it gives and what stays per instance.

Pure apart from reading the file: the adapter decides when to (re)load it and what to do with a failure.
"""

from __future__ import annotations

import os

from pyturn.errors import PyturnError

MIN_SECRET_BYTES = 16  # 128 bits: shorter secrets could be guessed from the nonces they sign


class NonceSecretError(PyturnError):
    """A nonce secret file that cannot be used; ``line`` is the offending line (None: the whole file)."""

    def __init__(self, message: str, path: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.message = message
        self.path = path
        self.line = line


def parse_nonce_secrets(data: bytes, path: str) -> list[bytes]:
    """The secrets of the file's bytes, first one first; NonceSecretError names the line that is wrong."""
    secrets: list[bytes] = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        line = raw.rstrip(b"\r").strip(b" \t")
        if not line or line.startswith(b"#"):
            continue
        if len(line) < MIN_SECRET_BYTES:
            # The message never shows the secret, only its size.
            raise NonceSecretError(f"a secret must be at least {MIN_SECRET_BYTES} bytes, this one has {len(line)}",
                                   path, number)
        secrets.append(line)
    if not secrets:
        raise NonceSecretError("holds no secret", path)
    return secrets


def load_nonce_secret(path: str | os.PathLike[str]) -> list[bytes]:
    """Read and parse the file; NonceSecretError when it cannot be read or holds no usable secret."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise NonceSecretError(f"cannot read: {error.strerror or error}", source) from error
    return parse_nonce_secrets(data, source)
