"""Reading a shared-secret file (one secret per line, pyturn.core.sharedsecret.parse_secret_lines).
"""

from __future__ import annotations

import os

from pyturn.core.sharedsecret import SecretFileError, parse_secret_lines


def load_secret_file(path: str | os.PathLike[str]) -> list[bytes]:
    """The secrets of a file; SecretFileError when it cannot be read or holds none (the message has no secret)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise SecretFileError(f"cannot read shared-secret file {source}: {error.strerror or error}") from error
    secrets = parse_secret_lines(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"))
    if not secrets:
        raise SecretFileError(f"shared-secret file {source} holds no secret")
    return secrets


