"""The control plane's durable state: one small key-value store on SQLite.

Every restartable control-plane actor (registry, selector, aggregator shards)
keeps what it must not lose here, and reloads it in `__init__` when Ray
restarts it. A write returns only after COMMIT (WAL): every write survives a
kill -9 of the process, and writes made with sync=True (the journal's record of
a round, before its escrow is taken) also survive a power loss, like every
ledger write (the ledger has its own store, synchronous=FULL throughout).

Values are msgpack. Tables named in `sealed` hold secrets (obfuscation
mappings, weights keys, prompts waiting for their tickets): their values are
AES-256-GCM under a key derived from `secret`, which the actor is given at
creation and never written into the file, so the file alone discloses none of
them. A sealed value is bound to its table and key (AAD): moving ciphertext to
another row makes it fail to open instead of being read as that row.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Iterable

import msgpack

from protocols.errors import VerinferError

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (tbl TEXT NOT NULL, k TEXT NOT NULL, v BLOB NOT NULL, PRIMARY KEY (tbl, k))"


class StoreError(VerinferError):
    """The durable store cannot be read as written (corrupt, or sealed under another key)."""


class Store:
    """Tables of key -> msgpack value. Use from one thread (actors call it from their loop)."""

    def __init__(self, path: str, secret: bytes | None = None, sealed: Iterable[str] = ()) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit is in the OS before the call returns, so it survives a
        # kill -9 of the process; only a power loss can drop the last commits. Writes that
        # guard money pass sync=True (FULL: on disk, with every commit before them).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._sealed = frozenset(sealed)
        if self._sealed and not secret:
            raise StoreError("sealed tables need a secret")
        self._key = _derive(secret) if secret else None
        self.writes = 0

    # --- values
    def _encode(self, tbl: str, k: str, value: Any) -> bytes:
        raw = msgpack.packb(value, use_bin_type=True)
        if tbl not in self._sealed:
            return raw
        from protocols.sealing import encrypt_blob

        return encrypt_blob(raw, self._key, os.urandom(12), _aad(tbl, k))

    def _decode(self, tbl: str, k: str, blob: bytes) -> Any:
        if tbl in self._sealed:
            from protocols.sealing import SealError, decrypt_blob

            try:
                blob = decrypt_blob(bytes(blob), self._key, _aad(tbl, k))
            except SealError as exc:
                raise StoreError(f"{self.path}: {tbl}/{k} does not open under this actor's key") from exc
        try:
            return msgpack.unpackb(bytes(blob), raw=False, strict_map_key=False)
        except Exception as exc:
            raise StoreError(f"{self.path}: {tbl}/{k} is not a stored value") from exc

    # --- writes: each call is one transaction, durable when it returns
    def put(self, tbl: str, k: str, value: Any) -> None:
        self.put_many([(tbl, k, value)])

    def put_many(self, rows: Iterable[tuple[str, str, Any]], deletes: Iterable[tuple[str, str]] = (),
                 sync: bool = False) -> None:
        rows = [(t, str(k), self._encode(t, str(k), v)) for t, k, v in rows]
        deletes = [(t, str(k)) for t, k in deletes]
        if not rows and not deletes:
            return
        if sync:
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._write(rows, deletes)
        finally:
            if sync:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _write(self, rows: list, deletes: list) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                self._db.executemany("INSERT OR REPLACE INTO kv(tbl, k, v) VALUES (?, ?, ?)", rows)
            if deletes:
                self._db.executemany("DELETE FROM kv WHERE tbl = ? AND k = ?", deletes)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.writes += 1

    def delete(self, tbl: str, k: str) -> None:
        self.put_many((), [(tbl, k)])

    # --- reads
    def get(self, tbl: str, k: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT v FROM kv WHERE tbl = ? AND k = ?", (tbl, str(k))).fetchone()
        return default if row is None else self._decode(tbl, str(k), row[0])

    def items(self, tbl: str) -> list[tuple[str, Any]]:
        rows = self._db.execute("SELECT k, v FROM kv WHERE tbl = ? ORDER BY rowid", (tbl,)).fetchall()
        return [(k, self._decode(tbl, k, v)) for k, v in rows]

    def keys(self, tbl: str, limit: int = -1) -> list[str]:
        """Keys in insertion order (oldest first), without reading the values."""
        return [r[0] for r in self._db.execute("SELECT k FROM kv WHERE tbl = ? ORDER BY rowid LIMIT ?", (tbl, limit))]

    def count(self, tbl: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM kv WHERE tbl = ?", (tbl,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()


def open_store(spec: dict | None, sealed: Iterable[str] = ()) -> Store | None:
    """The store an actor was created with: {"path": ..., "secret": bytes} (None: memory only)."""
    if not spec:
        return None
    return Store(spec["path"], spec.get("secret"), sealed)


def _derive(secret: bytes) -> bytes:
    from Crypto.Hash import SHA256
    from Crypto.Protocol.KDF import HKDF

    return HKDF(bytes(secret), 32, b"verinfer/store", SHA256)


def _aad(tbl: str, k: str) -> bytes:
    return b"verinfer/store|" + tbl.encode() + b"|" + k.encode()
