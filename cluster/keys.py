"""API keys of the HTTP gateway: SQLite next to the ledger, keys stored hashed.

A key (`vi-…`, shown once, at creation) maps to an account and its quota. The
gateway signs requests on the account's behalf with an Ed25519 key derived from
the store's master secret and the account name (custodial), so every key of one
account pays from the same ledger account (`client/<id>`). The master secret
lives beside the database, readable by its owner only. Imports no Ray.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass

from protocols.errors import ConfigError
from protocols.quota import Quota

PREFIX = "vi-"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, account TEXT NOT NULL, name TEXT NOT NULL,
    created REAL NOT NULL, revoked REAL, rpm INTEGER NOT NULL, tpm INTEGER NOT NULL,
    concurrent INTEGER NOT NULL, queue INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account: str
    name: str
    created: float
    revoked: float | None
    quota: Quota

    def describe(self) -> dict:
        return {"key_id": self.key_id, "account": self.account, "name": self.name, "created": self.created,
                "revoked": self.revoked, "quota": asdict(self.quota)}


def _hash(secret: str) -> bytes:
    return hashlib.sha256(b"verinfer/api-key/v1|" + secret.encode()).digest()


class KeyStore:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._master = self._load_master(path + ".master")

    @staticmethod
    def _load_master(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = secrets.token_bytes(32)
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                os.link(path + ".tmp", path)  # first writer wins, even across processes
            except FileExistsError:
                pass
            os.unlink(path + ".tmp")
            with open(path, "rb") as f:
                data = f.read()
        if len(data) != 32:
            raise ConfigError(f"{path} is not a 32-byte master secret")
        return data

    def create(self, account: str, name: str = "", quota: Quota | None = None) -> tuple[str, ApiKey]:
        """A new key for `account`: (the secret, shown only now; its record)."""
        if not isinstance(account, str) or not account or len(account) > 128 or "/" in account:
            raise ConfigError("an account is a non-empty name of at most 128 characters without '/'")
        q = quota or Quota()
        key_id = secrets.token_hex(6)
        secret = f"{PREFIX}{key_id}-{secrets.token_urlsafe(24)}"
        now = time.time()
        self._db.execute("INSERT INTO api_keys VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (key_id, _hash(secret), account, name, now, None, q.rpm, q.tpm, q.concurrent, q.queue))
        return secret, ApiKey(key_id, account, name, now, None, q)

    def _row(self, row) -> ApiKey:
        key_id, account, name, created, revoked, rpm, tpm, conc, queue = row
        return ApiKey(key_id, account, name, created, revoked, Quota(rpm, tpm, conc, queue))

    _COLS = "key_id, account, name, created, revoked, rpm, tpm, concurrent, queue"

    def lookup(self, secret: str) -> ApiKey | None:
        """The live key a bearer secret names; None for unknown, malformed or revoked."""
        if not isinstance(secret, str) or not secret.startswith(PREFIX) or len(secret) > 256:
            return None
        row = self._db.execute(f"SELECT {self._COLS} FROM api_keys WHERE hash = ?", (_hash(secret),)).fetchone()
        if row is None:
            return None
        key = self._row(row)
        return None if key.revoked is not None else key

    def list(self) -> list[ApiKey]:
        return [self._row(r) for r in self._db.execute(f"SELECT {self._COLS} FROM api_keys ORDER BY created")]

    def revoke(self, key_id: str) -> bool:
        cur = self._db.execute("UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                               (time.time(), key_id))
        return cur.rowcount == 1

    def signing_seed(self, account: str) -> bytes:
        """The account's Ed25519 seed (custodial signing): the same for every key of the account."""
        return hmac.new(self._master, b"verinfer/account-key/v1|" + account.encode(), hashlib.sha256).digest()
