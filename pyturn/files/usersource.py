"""The users and shared secrets one server authenticates with: given in code or read from UserDatabaseFile and
AuthSharedSecretFile, reloaded on demand (SIGHUP, ``Server.reload_users``) or when a file changes.

A failed load keeps what is in force. Log lines keep the logger ``pyturn.server`` they were always written to.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pyturn.config import Config
from pyturn.core.auth import UserLookup
from pyturn.core.sharedsecret import SecretFileError, SharedSecrets, UsersAndSecrets
from pyturn.core.stats import ReloadStats
from pyturn.core.userdb import UserDB
from pyturn.errors import PyturnError, UserDBError
from pyturn.files.secretfile import load_secret_file
from pyturn.files.userfile import load_user_file

log = logging.getLogger("pyturn.server")

Users = Mapping[str, str] | UserDB | UserLookup
SharedSecret = str | bytes | Sequence[str | bytes]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    loaded: bool
    users: int
    problems: list[str] = field(default_factory=list)
    secrets: int = 0  # shared secrets in force after the reload


class UserSource:
    """What a server's lookup is built from. ``lookup`` is the (username, realm) -> key callable in force;
    ``passwords`` the users given as a {username: password} mapping (Server.ice_servers hands them out);
    ``user_db`` the UserDB in force, if any; ``shared_secrets`` the TURN REST secrets; ``stats`` the reloads."""

    def __init__(self, config: Config, users: Users | None, shared_secret: SharedSecret | None) -> None:
        self.config = config
        self.passwords: dict[str, str] = {}
        self.from_file = users is None
        self.user_db: UserDB | None = None
        self._user_file_mtime: float | None = None  # set by the first load, before changed() compares with it
        given: list[str | bytes] = (
            [] if shared_secret is None
            else [shared_secret] if isinstance(shared_secret, str | bytes) else list(shared_secret)
        )
        self._inline_secrets: list[str | bytes] = [*config.auth_shared_secret, *given]
        self._file_secrets: list[bytes] = []
        self._secret_file_mtime: float | None = None
        self.shared_secrets = SharedSecrets((), realm=config.authentication_realm,
                                            separator=config.auth_shared_secret_separator,
                                            unix_offset=time.time() - time.monotonic())
        if config.auth_shared_secret_file:
            result = self._load_secret_file()
            if result.problems:
                raise SecretFileError("; ".join(result.problems))
        self.shared_secrets = self.shared_secrets.with_secrets([*self._inline_secrets, *self._file_secrets])
        self._users: UserLookup | None = self._initial_lookup(users)
        self.stats = ReloadStats()
        self.lookup = self._combined_lookup()
        self.stats.last_success = time.time()

    def _initial_lookup(self, users: Users | None) -> UserLookup | None:
        self.passwords = {}  # only users given as a mapping have passwords ice_servers() can hand out
        if users is None:
            if not self.config.user_database_file:
                if self.shared_secrets:
                    return None  # shared-secret credentials only
                raise PyturnError("no users: pass users=... or shared_secret=..., or set UserDatabaseFile")
            result = self._load_user_file()
            if not result.loaded:
                raise UserDBError("; ".join(result.problems) or "no valid user in the user file")
            assert self.user_db is not None
            return self.user_db
        if isinstance(users, UserDB):
            self.user_db = users
            return users
        if isinstance(users, Mapping):
            self.user_db = UserDB.from_passwords(users, self.config.authentication_realm)
            self.passwords = dict(users)
            return self.user_db
        return users

    def _combined_lookup(self) -> UserLookup:
        if not self.shared_secrets:
            assert self._users is not None
            return self._users
        return UsersAndSecrets(self._users, self.shared_secrets)

    def _load_secret_file(self) -> ReloadResult:
        """AuthSharedSecretFile: on failure the secrets in force stay (and the error never shows a secret)."""
        path = self.config.auth_shared_secret_file
        try:
            mtime = os.stat(path).st_mtime
            secrets = load_secret_file(path)
        except (OSError, SecretFileError) as error:
            log.error("shared-secret file %s not reloaded, the old secrets stay in force: %s", path,
                      error.strerror if isinstance(error, OSError) else error)
            return ReloadResult(False, 0, [str(error)], secrets=len(self.shared_secrets))
        self._file_secrets = secrets
        self._secret_file_mtime = mtime
        self.shared_secrets = self.shared_secrets.with_secrets([*self._inline_secrets, *secrets])
        log.info("loaded %d shared secrets from %s", len(secrets), path)
        return ReloadResult(True, 0, secrets=len(self.shared_secrets))

    def _load_user_file(self) -> ReloadResult:
        path = self.config.user_database_file
        assert path
        try:
            mtime = os.stat(path).st_mtime
            db, problems = load_user_file(path, hashed=self.config.user_database_hashed_passwords)
        except (OSError, UserDBError) as error:
            log.error("user file %s not reloaded, the old users stay in force: %s", path, error)
            return ReloadResult(False, len(self.user_db or ()), [str(error)])
        messages = [str(problem) for problem in problems]
        for message in messages:
            log.warning("%s", message)
        if len(db) == 0:
            log.error("user file %s has no valid user; the old users stay in force", path)
            return ReloadResult(False, len(self.user_db or ()), messages)
        if self.config.authentication_realm not in db.realms():
            log.warning("no user in %s has the realm %r", path, self.config.authentication_realm)
        self.user_db = db
        self._user_file_mtime = mtime
        log.info("loaded %d users from %s", len(db), path)
        return ReloadResult(True, len(db), messages)

    def reload(self, users: Users | None = None) -> ReloadResult:
        """Swap in new users (given, or re-read from the user file) and re-read AuthSharedSecretFile; ``lookup``
        is then the new one. A failed reload keeps the old users (or secrets); ``loaded`` is false when either
        failed."""
        secret_result = self._load_secret_file() if self.config.auth_shared_secret_file else None
        if users is not None:
            self._users = self._initial_lookup(users)
            result = ReloadResult(True, len(self.user_db) if self.user_db is not None else 0)
        elif self.from_file and self.config.user_database_file:
            result = self._load_user_file()
            if result.loaded:
                assert self.user_db is not None
                self._users = self.user_db
        elif secret_result is not None:
            result = ReloadResult(True, len(self.user_db) if self.user_db is not None else 0)
        else:
            return ReloadResult(False, 0, ["users were given in code; pass users= to reload them"],
                                secrets=len(self.shared_secrets))
        if secret_result is not None:
            result = ReloadResult(result.loaded and secret_result.loaded, result.users,
                                  [*result.problems, *secret_result.problems])
        result = dataclasses.replace(result, secrets=len(self.shared_secrets))
        self.lookup = self._combined_lookup()
        if result.loaded:
            self.stats.successes += 1
            self.stats.last_success = time.time()
        else:
            self.stats.failures += 1
        return result

    @property
    def watched(self) -> bool:
        """Whether there is a file to watch (UserDatabaseCheckInterval): the user file or the secret file."""
        return (self.from_file and bool(self.config.user_database_file)) or bool(self.config.auth_shared_secret_file)

    def changed(self) -> bool:
        """Whether the user file's or the secret file's mtime differs from the one loaded (unreadable: no)."""
        watched: list[tuple[str, float | None]] = []
        if self.from_file and self.config.user_database_file:
            watched.append((self.config.user_database_file, self._user_file_mtime))
        if self.config.auth_shared_secret_file:
            watched.append((self.config.auth_shared_secret_file, self._secret_file_mtime))
        for path, loaded_mtime in watched:
            try:
                if os.stat(path).st_mtime != loaded_mtime:
                    return True
            except OSError:
                continue
        return False

    def user_count(self) -> int:
        """Users in the database in force (0 when users come from a lookup callable)."""
        return len(self.user_db) if self.user_db is not None else 0

    @property
    def loaded(self) -> bool:
        """Users in force: a database with at least one user, or a lookup callable."""
        return self.user_db is None or len(self.user_db) > 0
