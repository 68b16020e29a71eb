"""Durable service state in one SQLite file: items added by text, feedback events, known users and the
users who asked to be forgotten.

The journal is WAL with ``synchronous=FULL``: when a write method returns, its rows are on disk and survive
a SIGKILL or a power cut. Events carry an ``event_id``; storing the same id twice stores it once, so a
client may retry a request whose answer it never saw. Framework-free: the service engine is the only user.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, fields TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS forgotten (user_hash TEXT PRIMARY KEY, at REAL NOT NULL);
"""


@dataclass(frozen=True)
class Event:
    """One piece of feedback. ``type``: view, click, like, purchase, dislike or rating (with ``value``)."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None = None
    ts: float = 0.0


def user_hash(user_id: str) -> str:
    """What a forgotten user leaves behind: a hash, so a base data set's history for them stays hidden
    after a restart without the store keeping their id."""
    return hashlib.sha256(f"llmrec-forgotten:{user_id}".encode()).hexdigest()


class Store:
    """The SQLite file ``<data_dir>/llmrec.sqlite3``. Thread-safe: one connection behind a lock."""

    FILENAME = "llmrec.sqlite3"

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / self.FILENAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, fn):
        """Run ``fn(db)`` in one IMMEDIATE transaction; committed (and fsynced) when this returns."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    # -- meta ----------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value)))

    # -- events --------------------------------------------------------------------------------------
    def add_events(self, events: list[Event]) -> list[bool]:
        """Store ``events`` in one transaction; returns, per event, True if new, False if its event_id
        was already stored (then nothing changes)."""
        def tx(db):
            now = time.time()
            new = []
            for e in events:
                cur = db.execute("INSERT OR IGNORE INTO events (event_id, user_id, item_id, type, value, ts) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (e.event_id, e.user_id, e.item_id, e.type, e.value, e.ts))
                new.append(cur.rowcount == 1)
                if cur.rowcount == 1:
                    db.execute("INSERT OR IGNORE INTO users VALUES (?, ?)", (e.user_id, now))
            return new
        return self._write(tx)

    def events(self, user_id: str | None = None) -> Iterator[Event]:
        """Stored events in arrival order, all or one user's."""
        with self._lock:
            if user_id is None:
                rows = self._db.execute("SELECT event_id, user_id, item_id, type, value, ts FROM events "
                                        "ORDER BY seq").fetchall()
            else:
                rows = self._db.execute("SELECT event_id, user_id, item_id, type, value, ts FROM events "
                                        "WHERE user_id = ? ORDER BY seq", (user_id,)).fetchall()
        return (Event(*r) for r in rows)

    def count_events(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # -- items ---------------------------------------------------------------------------------------
    def upsert_items(self, rows: list[dict]) -> None:
        """Add or replace items by ``item_id``; each row's other keys are its text fields."""
        def tx(db):
            now = time.time()
            for r in rows:
                fields = {k: v for k, v in r.items() if k != "item_id"}
                db.execute("INSERT INTO items VALUES (?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET "
                           "fields = excluded.fields, updated = excluded.updated",
                           (str(r["item_id"]), json.dumps(fields, ensure_ascii=False), now))
        self._write(tx)

    def items(self) -> list[dict]:
        """Stored items in the order they were first added."""
        with self._lock:
            rows = self._db.execute("SELECT item_id, fields FROM items ORDER BY rowid").fetchall()
        return [{"item_id": i, **json.loads(f)} for i, f in rows]

    # -- users ---------------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> int:
        """Delete the user's events and profile and leave a hash tombstone; returns events deleted."""
        def tx(db):
            n = db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            db.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            db.execute("INSERT OR REPLACE INTO forgotten VALUES (?, ?)", (user_hash(user_id), time.time()))
            return n
        n = self._write(tx)
        with self._lock:  # the WAL still holds the old pages: copy back and truncate it
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def forgotten(self) -> set[str]:
        """Hashes (see ``user_hash``) of the users who were forgotten."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT user_hash FROM forgotten")}
