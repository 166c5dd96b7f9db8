"""Reading a user file into a UserDB snapshot (the line formats are pyturn.core.userdb's).
"""

from __future__ import annotations

import os

from pyturn.core.userdb import UserDB, UserProblem, _split_lines, parse_user_lines
from pyturn.errors import UserDBError


def load_user_file(path: str | os.PathLike[str], *, hashed: bool) -> tuple[UserDB, list[UserProblem]]:
    """Read and parse a user file. Raises UserDBError only if the file cannot be read at all."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserDBError(f"cannot read user file {source}: {reason}") from exc
    text = data.decode("utf-8", "surrogateescape")
    text = text.removeprefix("\ufeff")  # a byte-order mark left by an editor is not part of the first login
    return parse_user_lines(_split_lines(text), source=source, hashed=hashed)
