"""Durable service state: items added by text, feedback events, known users, user-user relations and what
is left of the users who asked to be forgotten. ``StateStore`` is the interface the engine uses; ``Store``
keeps it in one SQLite file (the embedded default), ``llmrec.pgstore.PgStore`` in Postgres (shared by
replicas); ``open_store`` chooses. Both keep a versioned schema (``MIGRATIONS``-style lists,
``pending_migrations`` checks them).

The journal is WAL with ``synchronous=FULL``: when a write method returns, its rows are on disk and survive
a SIGKILL or a power cut. Events carry an ``event_id``, unique per user: storing the same (user, event id)
twice stores it once, so a client may retry a request whose answer it never saw, and one user's event ids
never touch another user's events.

Forgetting a user deletes their rows, and a WAL checkpoint then copies the change into the database file
(``secure_delete`` overwrites the freed pages) and truncates the WAL, so no copy of the rows stays in either
file. A reader holding an old snapshot (another process, a backup) can stop the checkpoint; the erasure is
then *pending*, said so, and completed by ``finish_erasure`` once the reader is gone.

What a forgotten user leaves behind is keyed hashes (keyed BLAKE2b with a random secret in
``<data_dir>/secret.key``): of their id, so a base data set's history for them stays hidden after a restart,
and of each deleted (user, event id), so a late retry of an acknowledged event does not bring their data
back. Without the secret the hashes cannot be tested against guessed ids.
Framework-free: the service engine is the only user.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from . import __version__
from .errors import DataError

EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    ts REAL NOT NULL,
    UNIQUE (user_id, event_id)
);
"""
SCHEMA = EVENTS + """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, fields TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, first_seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS forgotten_users (hash TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS forgotten_events (hash TEXT PRIMARY KEY);
"""
# Migration i (1-based) brings a store from schema version i - 1 to i; meta's ``schema_version`` records
# where a store is. Add a table by appending a step here (and to ``pgstore.MIGRATIONS``).
MIGRATIONS: tuple[str, ...] = (SCHEMA, """
CREATE TABLE IF NOT EXISTS relations (
    user_id TEXT NOT NULL,
    related_id TEXT NOT NULL,
    weight REAL NOT NULL,
    PRIMARY KEY (user_id, related_id)
);
CREATE INDEX IF NOT EXISTS relations_by_related ON relations (related_id);
""")
SECRET_FILE = "secret.key"
CHECKPOINT_WAIT_MS = 200  # how long one erasure attempt waits for readers to move on


@dataclass(frozen=True)
class Event:
    """One piece of feedback. ``type``: view, click, like, purchase, dislike or rating (with ``value``)."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None = None
    ts: float = 0.0


@dataclass(frozen=True)
class Change:
    """What another replica committed, as a shared store's feed reports it: ``kind`` is ``events`` (new
    ``events``), ``forget`` (the user whose keyed hash is ``user_key`` was forgotten), ``items`` (``items``
    rows added or replaced), ``relations`` (a user's relations were set: read them again) or ``resync``
    (changes may have been missed: reload everything)."""

    kind: str
    events: tuple[Event, ...] = ()
    user_key: str = ""
    items: tuple[dict, ...] = field(default=())


class StateStore(Protocol):
    """What the service engine needs of a store. Every write method commits durably before it returns."""

    erasure_pending: bool
    location: str  # where the state is, for messages (never a password)

    def close(self) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def add_events(self, events: list[Event]) -> list[bool]: ...
    def events(self, user_id: str | None = None) -> Iterator[Event]: ...
    def has_user(self, user_id: str) -> bool: ...
    def count_events(self) -> int: ...
    def upsert_items(self, rows: list[dict]) -> None: ...
    def items(self) -> list[dict]: ...
    def set_relations(self, user_id: str, related: dict[str, float]) -> None: ...
    def relations(self) -> dict[str, dict[str, float]]: ...
    def forget_user(self, user_id: str) -> tuple[int, bool]: ...
    def finish_erasure(self) -> bool: ...
    def forgotten_among(self, user_ids: Iterable[str]) -> set[str]: ...
    def reading(self) -> AbstractContextManager: ...
    def user_key(self, user_id: str) -> str: ...


@runtime_checkable
class ChangeFeed(Protocol):
    """A store shared by several server processes, which reports what the others commit."""

    def follow(self, on_change: Callable[[Change], None]) -> None:
        """Call ``on_change`` (on a feed thread) for each change another process commits, in commit
        order, from the moment the store was opened; ``resync`` after a gap."""


def pending_migrations(found: int, steps: Sequence, where: str) -> list[tuple[int, object]]:
    """The (version, step) pairs that bring a store at schema version ``found`` to ``len(steps)``;
    a store from a newer llmrec is refused, naming both versions."""
    if found > len(steps):
        raise DataError(f"schema version {found} was written by a newer llmrec; this llmrec ({__version__}) "
                        f"knows schema versions up to {len(steps)}: upgrade llmrec to serve this store",
                        path=where)
    return list(enumerate(steps, 1))[found:]


def open_store(database: str | None, data_dir: str | Path) -> StateStore:
    """The store for ``database``: a ``postgresql://`` URL (Postgres, the keyed hashes' secret in
    ``data_dir``) or None (SQLite in ``data_dir``)."""
    if database and database.split("://", 1)[0] in ("postgresql", "postgres"):
        from .pgstore import PgStore
        return PgStore(database, data_dir)
    if database:
        raise DataError("expected a postgresql://USER@HOST:PORT/DB URL (or none for SQLite in --data-dir)",
                        field="--database")
    return Store(data_dir)


def _legacy_user_hash(user_id: str) -> str:
    """The unkeyed tombstone of stores written before the secret existed (migrated on first use)."""
    return hashlib.sha256(f"llmrec-forgotten:{user_id}".encode()).hexdigest()


def _read_secret(folder: Path) -> bytes:
    """The store's 32-byte secret, created once (readable by the owner only). Written whole to a
    temporary file and linked into place, so processes starting together all read the same one."""
    path = folder / SECRET_FILE
    if not path.exists():
        tmp = folder / f".{SECRET_FILE}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: its secret counts
        finally:
            os.unlink(tmp)
    secret = path.read_bytes()
    if len(secret) != 32:
        raise DataError("not a 32-byte secret: the store's keyed hashes need it; restore it from a "
                        "backup (a new secret makes the record of forgotten users unreadable)",
                        path=str(path))
    return secret


class Store:
    """The SQLite file ``<data_dir>/llmrec.sqlite3``. Thread-safe: one connection behind a lock."""

    FILENAME = "llmrec.sqlite3"

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: the owner's only
        self.path = self.dir / self.FILENAME
        self._secret = _read_secret(self.dir)
        self._lock = threading.Lock()
        # user data, readable by the owner only (SQLite gives the -wal and -shm files the same mode)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
        self.location = str(self.path)
        self._migrate()
        self._versioned()
        self.erasure_pending = bool(self.get_meta("erasure_pending"))
        if self.erasure_pending:
            self.finish_erasure()

    def _migrate(self) -> None:
        """Bring a store written by an older version to this schema, in one transaction."""
        def tables(db) -> dict[str, str]:
            return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
        t = tables(self._db)
        old_events = "events" in t and "UNIQUE (user_id, event_id)" not in t["events"]
        if not old_events and "forgotten" not in t:
            return

        def tx(db):
            if old_events:  # event ids were global: make them unique per user
                db.execute("ALTER TABLE events RENAME TO events_old")
                db.execute("DROP INDEX IF EXISTS events_by_user")
                db.execute(EVENTS)
                db.execute("INSERT INTO events (seq, event_id, user_id, item_id, type, value, ts) "
                           "SELECT seq, event_id, user_id, item_id, type, value, ts FROM events_old")
                db.execute("DROP TABLE events_old")
            if "forgotten" in t:  # unkeyed tombstones: kept aside, re-keyed as their users are seen
                db.execute("CREATE TABLE IF NOT EXISTS forgotten_legacy (user_hash TEXT PRIMARY KEY)")
                db.execute("INSERT OR IGNORE INTO forgotten_legacy SELECT user_hash FROM forgotten")
                db.execute("DROP TABLE forgotten")
        self._write(tx)

    def _versioned(self) -> None:
        """Apply the pending ``MIGRATIONS`` in one transaction (a store from before versioning is at 0)."""
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        found = int(self.get_meta("schema_version") or 0)
        steps = pending_migrations(found, MIGRATIONS, str(self.path))
        if not steps:
            return

        def tx(db):
            for version, script in steps:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),))
        self._write(tx)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reading(self) -> AbstractContextManager:
        """Reads in one view of the state (one connection and one writer: any view is one)."""
        return nullcontext()

    def user_key(self, user_id: str) -> str:
        """The keyed hash a forgotten user's tombstone holds."""
        return self._hash("user", user_id)

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

    def _hash(self, *parts: str) -> str:
        """Keyed BLAKE2b (a MAC, like HMAC, in one C call: a start with a million users hashes them all)."""
        msg = "\x00".join(parts).encode("utf-8")
        return hashlib.blake2b(msg, key=self._secret, digest_size=32).hexdigest()

    # -- meta ----------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value)))

    # -- events --------------------------------------------------------------------------------------
    def add_events(self, events: list[Event]) -> list[bool]:
        """Store ``events`` in one transaction; returns, per event, True if new, False if the user already
        sent that event id, or sent it before they were forgotten (then nothing changes)."""
        def tx(db):
            now = time.time()
            new = []
            for e in events:
                gone = db.execute("SELECT 1 FROM forgotten_events WHERE hash = ?",
                                  (self._hash("event", e.user_id, e.event_id),)).fetchone()
                if gone:
                    new.append(False)
                    continue
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

    def has_user(self, user_id: str) -> bool:
        """Whether any row of the user is stored (events, profile or relations)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM users WHERE user_id = ? UNION ALL SELECT 1 FROM events "
                                    "WHERE user_id = ? UNION ALL SELECT 1 FROM relations WHERE user_id = ? "
                                    "LIMIT 1", (user_id, user_id, user_id)).fetchone() is not None

    def count_events(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # -- items ---------------------------------------------------------------------------------------
    def upsert_items(self, rows: list[dict]) -> None:
        """Add or replace items by ``item_id``; each row's other keys are its fields (the whole item)."""
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

    # -- relations -----------------------------------------------------------------------------------
    def set_relations(self, user_id: str, related: dict[str, float]) -> None:
        """Replace the user's relations (related user id -> weight) in one transaction."""
        def tx(db):
            db.execute("DELETE FROM relations WHERE user_id = ?", (user_id,))
            db.executemany("INSERT INTO relations VALUES (?, ?, ?)",
                           [(user_id, v, float(w)) for v, w in related.items()])
        self._write(tx)

    def relations(self) -> dict[str, dict[str, float]]:
        """Every stored relation: user id -> {related user id: weight}, in the order they were set."""
        with self._lock:
            rows = self._db.execute("SELECT user_id, related_id, weight FROM relations ORDER BY rowid").fetchall()
        out: dict[str, dict[str, float]] = {}
        for u, v, w in rows:
            out.setdefault(u, {})[v] = w
        return out

    # -- users ---------------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> tuple[int, bool]:
        """Delete the user's events, profile and relations (theirs and those naming them), leave keyed
        tombstones, and erase the old rows from the files. Returns (events deleted, erased): erased is
        False while another reader holds an old snapshot; ``erasure_pending`` is then True until
        ``finish_erasure`` succeeds."""
        def tx(db):
            ids = [r[0] for r in db.execute("SELECT event_id FROM events WHERE user_id = ?", (user_id,))]
            db.executemany("INSERT OR IGNORE INTO forgotten_events VALUES (?)",
                           [(self._hash("event", user_id, e),) for e in ids])
            n = db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            db.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM relations WHERE user_id = ? OR related_id = ?", (user_id, user_id))
            db.execute("INSERT OR REPLACE INTO forgotten_users VALUES (?, ?)",
                       (self._hash("user", user_id), time.time()))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('erasure_pending', '1')")
            return n
        n = self._write(tx)
        self.erasure_pending = True
        return n, self.finish_erasure()

    def finish_erasure(self) -> bool:
        """Checkpoint the whole WAL into the database file and truncate it; True when nothing of a deleted
        row is left in either file. False (pending) while a reader holds an older snapshot."""
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")  # writers wait on this lock
            try:
                busy, log, done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy or log != done:
                    return False
                self._db.execute("DELETE FROM meta WHERE key = 'erasure_pending'")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fold that delete in too
            finally:
                self._db.execute("PRAGMA busy_timeout=5000")
            self.erasure_pending = False
        return True

    def forgotten_among(self, user_ids: Iterable[str]) -> set[str]:
        """Those of ``user_ids`` who were forgotten. Tombstones from before the keyed hash are re-keyed
        here as their users are met, and the unkeyed copy deleted."""
        user_ids = list(user_ids)
        with self._lock:
            keyed = {r[0] for r in self._db.execute("SELECT hash FROM forgotten_users")}
            has_legacy = self._db.execute("SELECT name FROM sqlite_master WHERE name = 'forgotten_legacy'"
                                          ).fetchone() is not None
            legacy = ({r[0] for r in self._db.execute("SELECT user_hash FROM forgotten_legacy")}
                      if has_legacy else set())
        out = {u for u in user_ids if self._hash("user", u) in keyed} if keyed else set()
        if legacy:
            found = {u: _legacy_user_hash(u) for u in user_ids if _legacy_user_hash(u) in legacy}

            def tx(db):
                db.executemany("INSERT OR REPLACE INTO forgotten_users VALUES (?, ?)",
                               [(self._hash("user", u), time.time()) for u in found])
                db.executemany("DELETE FROM forgotten_legacy WHERE user_hash = ?", [(h,) for h in found.values()])
            self._write(tx)
            out |= set(found)
        return out
