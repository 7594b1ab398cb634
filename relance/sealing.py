"""Secrets at rest: provider credentials and callback signing secrets are stored encrypted
(Fernet: AES-128-CBC and HMAC-SHA256) under the keys of RELANCE_SECRET_KEYS, newest first.

The ledger's columns do it themselves (`SealedJSON`, `SealedText` in relance/db.py): a row is
written sealed under the newest key and read back with any of the keys, so code above the
ledger only ever sees clear values in memory. Without keys a secret is written in clear and
marked as such (`relance secrets rotate` seals it once a key is set); a sealed secret that no
key opens is never guessed at: reading it raises `SecretsLocked`.

The keys are process-wide, as the ledger engine is: the API, the worker and the CLI install
them from their settings when they start (`install`); anything else uses RELANCE_SECRET_KEYS."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import JSON, Text
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.types import TypeDecorator

log = logging.getLogger("relance.sealing")

SETTING = "RELANCE_SECRET_KEYS"
# How a sealed value is told from a clear one: a prefix on text, a lone key in a JSON object
# (no provider's credentials have a key starting with "$").
SEALED_PREFIX, CLEAR_PREFIX = "fernet:", "clear:"
SEALED_KEY = "$fernet"


class SecretsLocked(Exception):
    """A sealed secret that the configured keys cannot open (or there are no keys)."""


class BadKeys(ValueError):
    """RELANCE_SECRET_KEYS holds something that is not a Fernet key; the key is not shown."""


class Keyring:
    """The keys of RELANCE_SECRET_KEYS: seals under the first, opens with any."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise BadKeys(f"{SETTING}: no key")
        fernets = []
        for i, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.strip().encode()))
            except (ValueError, TypeError):
                raise BadKeys(
                    f"{SETTING}: key {i + 1} of {len(keys)} is not a Fernet key (32 random "
                    "bytes, url-safe base64; `relance secrets new-key` prints one)"
                ) from None
        self.size = len(fernets)
        self._multi = MultiFernet(fernets)
        self._newest = fernets[0]

    def seal(self, clear: str) -> str:
        return self._multi.encrypt(clear.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._multi.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretsLocked(
                f"a secret in the ledger was encrypted with a key that is not in {SETTING}: "
                "set the key it was encrypted with (older keys go after the newest)"
            ) from None

    def reseal(self, token: str) -> str:
        """The same secret, sealed under the newest key (MultiFernet.rotate)."""
        try:
            return self._multi.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretsLocked(
                f"a secret in the ledger was encrypted with a key that is not in {SETTING}"
            ) from None


def new_key() -> str:
    return Fernet.generate_key().decode()


def parse_keys(value: str | Sequence[str] | None) -> list[str]:
    """Comma-separated (the environment variable) or a list; blanks dropped."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [k.strip() for k in items if k.strip()]


_UNSET: Any = object()
_installed: Keyring | None = _UNSET


def install(keys: str | Sequence[str] | None) -> Keyring | None:
    """Make `keys` the process's keys (None or empty: secrets are written in clear)."""
    global _installed
    parsed = parse_keys(keys)
    _installed = Keyring(parsed) if parsed else None
    return _installed


def current() -> Keyring | None:
    """The installed keys, else those of RELANCE_SECRET_KEYS."""
    if _installed is _UNSET:
        from relance.settings import get_settings

        install(get_settings().secret_keys.get_secret_value())
    return _installed


@contextmanager
def using(keys: str | Sequence[str] | None) -> Iterator[Keyring | None]:
    """`keys` for the duration (a test, or a command that names its own keys)."""
    global _installed
    before = _installed
    try:
        yield install(keys)
    finally:
        _installed = before


# What a stored value is, read without opening it.
def is_sealed_text(stored: str | None) -> bool:
    return stored is not None and stored.startswith(SEALED_PREFIX)


def is_sealed_json(stored: Any) -> bool:
    return isinstance(stored, dict) and set(stored) == {SEALED_KEY}


def seal_text(clear: str, keyring: Keyring | None) -> str:
    if keyring is None:
        return CLEAR_PREFIX + clear
    return SEALED_PREFIX + keyring.seal(clear)


def open_text(stored: str, keyring: Keyring | None) -> str:
    if stored.startswith(SEALED_PREFIX):
        if keyring is None:
            raise SecretsLocked(
                f"the ledger holds encrypted secrets and {SETTING} is not set: set it to the "
                "key(s) they were encrypted with"
            )
        return keyring.open(stored[len(SEALED_PREFIX) :])
    if stored.startswith(CLEAR_PREFIX):
        return stored[len(CLEAR_PREFIX) :]
    return stored  # written before secrets were sealed and not yet migrated


def seal_json(clear: dict[str, Any], keyring: Keyring | None) -> dict[str, Any]:
    if keyring is None:
        return clear
    return {SEALED_KEY: keyring.seal(json.dumps(clear, separators=(",", ":")))}


def open_json(stored: dict[str, Any], keyring: Keyring | None) -> dict[str, Any]:
    if not is_sealed_json(stored):
        return stored
    if keyring is None:
        raise SecretsLocked(
            f"the ledger holds encrypted secrets and {SETTING} is not set: set it to the "
            "key(s) they were encrypted with"
        )
    opened: dict[str, Any] = json.loads(keyring.open(stored[SEALED_KEY]))
    return opened


class SealedText(TypeDecorator[str]):
    """A text secret: `fernet:<token>` in the database, the clear text in memory."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else seal_text(value, current())

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else open_text(value, current())


class SealedJSON(TypeDecorator[dict[str, Any]]):
    """A JSON object of secrets: `{"$fernet": <token>}` in the database, the object in memory."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else seal_json(value, current())

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else open_json(value, current())


# The stored columns as they are on disk, not opened: what the migration, `relance secrets
# rotate` and the start-up check read and write.
_apps = sa.table("app", sa.column("app_key", sa.String), sa.column("callback_secret", sa.Text))
_providers = sa.table(
    "providerconfig",
    sa.column("id", sa.Integer),
    sa.column("app_key", sa.String),
    sa.column("provider", sa.String),
    sa.column("credentials", JSON),
)


@dataclass
class Census:
    """How many secrets the ledger holds sealed and in clear."""

    sealed: int = 0
    clear: int = 0


def _stored(conn: Connection) -> Iterator[tuple[str, Any, Any]]:
    """(where, key, stored value) of every secret; `where` names it for humans, never the value."""
    for app_key, stored in conn.execute(
        sa.select(_apps.c.app_key, _apps.c.callback_secret).where(
            _apps.c.callback_secret.is_not(None)
        )
    ):
        yield f"app {app_key!r} callback secret", ("app", app_key), stored
    for id_, app_key, provider, stored in conn.execute(
        sa.select(
            _providers.c.id, _providers.c.app_key, _providers.c.provider, _providers.c.credentials
        )
    ):
        yield f"app {app_key!r} {provider} credentials", ("providerconfig", id_), stored


def _is_sealed(stored: Any) -> bool:
    return is_sealed_text(stored) if isinstance(stored, str) else is_sealed_json(stored)


def census(conn: Connection) -> Census:
    found = Census()
    for _where, _key, stored in _stored(conn):
        if _is_sealed(stored):
            found.sealed += 1
        else:
            found.clear += 1
    return found


def check_keys(conn: Connection, keyring: Keyring | None) -> Census:
    """Raise `SecretsLocked` unless `keyring` opens every sealed secret of the ledger: the API
    and the worker check this before they start, rather than fail on a push or a callback."""
    found = census(conn)
    if found.sealed and keyring is None:
        raise SecretsLocked(
            f"the ledger holds {found.sealed} encrypted secret(s) and {SETTING} is not set: "
            "set it to the key(s) they were encrypted with, newest first"
        )
    if keyring is not None:
        for where, _key, stored in _stored(conn):
            if not _is_sealed(stored):
                continue
            try:
                if isinstance(stored, str):
                    open_text(stored, keyring)
                else:
                    open_json(stored, keyring)
            except SecretsLocked:
                raise SecretsLocked(
                    f"the {where} was encrypted with a key that is not in {SETTING}: set "
                    "the key it was encrypted with (older keys go after the newest)"
                ) from None
    return found


def seal_all(conn: Connection, keyring: Keyring | None) -> Census:
    """Write every secret again: sealed under the newest key of `keyring` (a sealed one keeps
    its first-encryption time), or, without keys, marked as clear (sealed ones untouched).
    Returns what there was before. One pass in the caller's transaction: all or nothing."""
    before = Census()
    for where, (table, key), stored in list(_stored(conn)):
        sealed = _is_sealed(stored)
        before.sealed += sealed
        before.clear += not sealed
        if sealed and keyring is None:
            continue
        try:
            if isinstance(stored, str):
                value: Any = (
                    SEALED_PREFIX + keyring.reseal(stored[len(SEALED_PREFIX) :])
                    if sealed and keyring is not None
                    else seal_text(open_text(stored, keyring), keyring)
                )
            elif sealed and keyring is not None:
                value = {SEALED_KEY: keyring.reseal(stored[SEALED_KEY])}
            else:
                value = seal_json(open_json(stored, keyring), keyring)
        except SecretsLocked:
            raise SecretsLocked(
                f"the {where} was encrypted with a key that is not in {SETTING}: nothing was "
                "changed; add the key it was encrypted with after the newest"
            ) from None
        if value == stored:
            continue
        if table == "app":
            conn.execute(_apps.update().where(_apps.c.app_key == key).values(callback_secret=value))
        else:
            conn.execute(
                _providers.update().where(_providers.c.id == key).values(credentials=value)
            )
    return before


def start(engine: Engine, keys: str | Sequence[str] | None, who: str) -> Census:
    """What the API and the worker do before they start: install their keys, refuse
    (`SecretsLocked`) a ledger whose sealed secrets the keys cannot open, and say when secrets
    are still in clear."""
    keyring = install(keys)
    with engine.connect() as conn:
        found = check_keys(conn, keyring)
    if found.clear and keyring is None:
        log.warning(
            "%s: %s is not set: %d secret(s) in the ledger are stored in clear, and new ones "
            "will be too",
            who,
            SETTING,
            found.clear,
        )
    elif found.clear:
        log.warning(
            "%s: %d secret(s) in the ledger are in clear: run `relance secrets rotate`",
            who,
            found.clear,
        )
    return found
