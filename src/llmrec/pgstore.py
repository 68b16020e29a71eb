"""The service's state in Postgres, shared by several server processes (replicas): the same tables and
methods as the SQLite ``Store`` (``llmrec.store.StateStore``), plus a change feed (LISTEN/NOTIFY).

Durability: every write is one transaction, acknowledged after COMMIT (``synchronous_commit`` as the server
has it; Postgres's default flushes the WAL first). Events carry an ``event_id`` unique per user.

The feed: each write transaction sends ``NOTIFY llmrec_changes, '<kind> <transaction id> [key]'`` (no user
data: a forgotten user is named by their keyed hash), delivered to every listener at commit, in commit
order. ``follow`` reads them on its own connection and hands the engine what the transaction wrote
(``store.Change``); its own transactions are skipped, and so are those already in the view the engine
loaded (the snapshot of ``reading``). When the feed's connection is lost the engine keeps serving what it
has; on reconnect it resyncs (``Change("resync")``: a full reload in one snapshot).

Forgetting a user deletes their rows in one transaction and then rewrites the hash partitions that held
them (``VACUUM FULL`` of one of ``PARTITIONS`` partitions of events and of users): a plain VACUUM frees the
dead tuples but can leave their bytes in the pages' free space. A transaction whose snapshot is older than
the delete would have its rows copied into the new pages; then the erasure is *pending* (as in SQLite) and
``finish_erasure`` completes it once that transaction is gone.

Errors: an unreachable server at start, or lost mid-run, is ``StoreUnavailable`` naming the URL without
its password; the pool reconnects by itself when the server is back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError, StoreUnavailable
from .store import Change, Event, _read_secret, pending_migrations

log = logging.getLogger("llmrec.pgstore")
PARTITIONS = 16        # hash partitions of events and users: an erasure rewrites one of each
CHANNEL = "llmrec_changes"
POOL_WAIT_S = 2.0      # how long a request waits for a connection before it answers 503
CONNECT_TIMEOUT_S = 5
WRITE_ATTEMPTS = 3     # a transaction rolled back by a deadlock or a serialization conflict is run again
ERASE_LOCK_TIMEOUT = "500ms"  # how long a rewrite waits for the partition's lock before it is retried


def _partitions(table: str, columns: str, extra: str = "") -> str:
    head = f"CREATE TABLE {table} ({columns}) PARTITION BY HASH (user_id);\n"
    return head + "".join(f"CREATE TABLE {table}_p{i} PARTITION OF {table} FOR VALUES WITH "
                          f"(MODULUS {PARTITIONS}, REMAINDER {i});\n" for i in range(PARTITIONS)) + extra


# Migration i (1-based) brings schema version i - 1 to i (the same numbering as ``store.MIGRATIONS``). A new
# table of user data is one more step, made with ``_partitions`` (hash-partitioned by ``user_id``) and named
# in ``USER_TABLES``: forgetting a user then deletes from it and rewrites the partition that held the rows.
MIGRATIONS: tuple[str, ...] = (
    "CREATE TABLE items (item_id text PRIMARY KEY, fields text NOT NULL, updated double precision NOT NULL, "
    "added bigserial, txid bigint NOT NULL);\n"
    "CREATE INDEX items_by_tx ON items (txid);\n"
    + _partitions("users", "user_id text PRIMARY KEY, first_seen double precision NOT NULL")
    + _partitions("events", "seq bigserial, event_id text NOT NULL, user_id text NOT NULL, "
                  "item_id text NOT NULL, type text NOT NULL, value double precision, "
                  "ts double precision NOT NULL, txid bigint NOT NULL, UNIQUE (user_id, event_id)",
                  "CREATE INDEX events_by_user ON events (user_id, seq);\n"
                  "CREATE INDEX events_by_tx ON events (txid);\n")
    + "CREATE TABLE forgotten_users (hash text PRIMARY KEY, at double precision NOT NULL);\n"
    "CREATE TABLE forgotten_events (hash text PRIMARY KEY);\n",
    # 2: user-user relations (a row also names the related user: forgetting deletes those rows too)
    _partitions("relations", "seq bigserial, user_id text NOT NULL, related_id text NOT NULL, "
                "weight double precision NOT NULL, PRIMARY KEY (user_id, related_id)",
                "CREATE INDEX relations_by_related ON relations (related_id);\n"),
)
USER_TABLES = ("events", "users", "relations")  # tables keyed by user_id, partitioned like them
MIGRATION_LOCK = 0x6C6C6D72  # advisory lock: replicas starting together migrate one at a time

ADD_EVENTS = """
WITH input AS (
    SELECT * FROM unnest(%(eid)s::text[], %(uid)s::text[], %(iid)s::text[], %(typ)s::text[],
                         %(val)s::float8[], %(ts)s::float8[], %(hash)s::text[])
        WITH ORDINALITY AS t(event_id, user_id, item_id, type, value, ts, hash, n)
), ins AS (
    INSERT INTO events (event_id, user_id, item_id, type, value, ts, txid)
    SELECT event_id, user_id, item_id, type, value, ts, pg_current_xact_id()::text::bigint FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM forgotten_events f WHERE f.hash = i.hash)
    ORDER BY n
    ON CONFLICT (user_id, event_id) DO NOTHING
    RETURNING user_id, event_id
), new_users AS (
    -- in one order (by id): two transactions adding the same new users never wait on each other in a cycle
    INSERT INTO users SELECT DISTINCT user_id, %(now)s FROM ins ORDER BY user_id ON CONFLICT DO NOTHING
)
SELECT user_id, event_id FROM ins
"""
EVENT_COLUMNS = "event_id, user_id, item_id, type, value, ts"


def redact(url: str) -> str:
    """``url`` without its password (in the user part or a ``password=`` parameter)."""
    try:
        u = urllib.parse.urlsplit(url)
        netloc = u.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.split(':', 1)[0]}{':***' if ':' in user else ''}@{host}"
        query = "&".join(f"{k}=***" if k == "password" else f"{k}={v}"
                         for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        return urllib.parse.urlunsplit((u.scheme, netloc, u.path, query, ""))
    except ValueError:
        return "postgresql://(unparsable URL)"


def _reason(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _visible(xid: int, snapshot: tuple[int, int, frozenset[int]] | None) -> bool:
    """Whether transaction ``xid`` had committed in ``snapshot`` (xmin, xmax, in-progress ids)."""
    if snapshot is None:
        return False
    xmin, xmax, xip = snapshot
    return xid < xmin or (xid < xmax and xid not in xip)


class PgStore:
    """The state in the Postgres database at ``url``; the keyed hashes' secret in ``data_dir`` (every replica
    needs the same secret: the database records a check of it and refuses another). Thread-safe."""

    def __init__(self, url: str, data_dir: str | Path):
        import psycopg
        from psycopg_pool import ConnectionPool
        self._psycopg = psycopg
        self.url, self.location = url, redact(url)
        self.dir = Path(data_dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._secret = _read_secret(self.dir)
        self._own: set[int] = set()         # this process's committed transactions (the feed skips them)
        self._own_lock = threading.Lock()   # held across a write's COMMIT and its registration
        self._snapshot: tuple[int, int, frozenset[int]] | None = None
        self._viewed = threading.Event()    # set once a view was loaded: the feed waits for its snapshot
        self._local = threading.local()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None
        try:
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                self._migrate(conn)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"cannot connect to the store {self.location}: {_reason(e)}") from None
        except psycopg.ProgrammingError:  # the URL does not parse (its text may hold the password)
            raise DataError(f"not a valid Postgres URL: {self.location}", field="--database") from None
        self._pool = ConnectionPool(url, min_size=1, max_size=8, timeout=POOL_WAIT_S, open=False,
                                    check=ConnectionPool.check_connection, reconnect_timeout=float("inf"),
                                    kwargs={"connect_timeout": CONNECT_TIMEOUT_S}, name="llmrec")
        self._pool.open(wait=False)
        self.erasure_pending = any(True for _ in self._pending_erasures())
        if self.erasure_pending:
            self.finish_erasure()

    # -- plumbing ------------------------------------------------------------------------------------
    def _migrate(self, conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            for version, script in pending_migrations(int(row[0]) if row else 0, MIGRATIONS, self.location):
                conn.execute(script)
                conn.execute("INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE "
                             "SET value = excluded.value", (str(version),))
            check = self._hash("secret-check")
            conn.execute("INSERT INTO meta VALUES ('secret_check', %s) ON CONFLICT DO NOTHING", (check,))
            stored = conn.execute("SELECT value FROM meta WHERE key = 'secret_check'").fetchone()[0]
        if stored != check:
            raise DataError(f"not the secret the store {self.location} was written with: copy the other "
                            "replicas' secret.key here (a new one makes the record of forgotten users unreadable)",
                            path=str(self.dir / "secret.key"))

    @contextmanager
    def _conn(self):
        """A connection: this thread's ``reading`` one, or one from the pool; errors of reaching the
        server become ``StoreUnavailable``."""
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:
            yield pinned
            return
        from psycopg_pool import PoolTimeout
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._psycopg.errors.TransactionRollback:
            raise  # a deadlock or a conflict, not a lost server: the write runs again
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError, PoolTimeout) as e:
            raise StoreUnavailable(f"the store {self.location} is unavailable: {_reason(e)}") from None

    def _write(self, fn, kind: str, key: str = ""):
        """Run ``fn(conn)`` in one transaction that also notifies the other replicas; committed when this
        returns. A transaction Postgres rolled back to break a deadlock or a conflict is run again."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._conn() as conn, self._own_lock:
                    with conn.transaction():
                        out = fn(conn)
                        xid = conn.execute("SELECT pg_current_xact_id()::text::bigint, pg_notify(%s, %s || ' ' "
                                           "|| pg_current_xact_id()::text || ' ' || %s)",
                                           (CHANNEL, kind, key)).fetchone()[0]
                    self._own.add(xid)
                return out
            except self._psycopg.errors.TransactionRollback:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _read(self, sql: str, params=()) -> list[tuple]:
        with self._conn() as conn:
            return conn.execute(sql, params).fetchall()

    def _hash(self, *parts: str) -> str:
        import hashlib
        msg = "\x00".join(parts).encode("utf-8")
        return hashlib.blake2b(msg, key=self._secret, digest_size=32).hexdigest()

    def user_key(self, user_id: str) -> str:
        return self._hash("user", user_id)

    def close(self) -> None:
        self._closed.set()
        self._pool.close()
        if self._listener is not None:
            self._listener.join(5)

    @contextmanager
    def reading(self):
        """This thread's reads inside the block see one snapshot (REPEATABLE READ), and the feed skips
        the transactions that snapshot already holds."""
        with self._conn() as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                xmin, xmax, xip = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0].split(":")
                self._snapshot = (int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))
                self._viewed.set()
                self._local.conn = conn
                try:
                    yield
                finally:
                    self._local.conn = None

    # -- meta ----------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda c: c.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET "
                                        "value = excluded.value", (key, value)), "meta")

    # -- events --------------------------------------------------------------------------------------
    def add_events(self, events: list[Event]) -> list[bool]:
        """Store ``events`` in one transaction (one statement); per event, True if new, False if the user
        already sent that event id, or sent it before they were forgotten."""
        params = {"eid": [e.event_id for e in events], "uid": [e.user_id for e in events],
                  "iid": [e.item_id for e in events], "typ": [e.type for e in events],
                  "val": [e.value for e in events], "ts": [e.ts for e in events],
                  "hash": [self._hash("event", e.user_id, e.event_id) for e in events], "now": time.time()}
        inserted = set(map(tuple, self._write(lambda c: c.execute(ADD_EVENTS, params).fetchall(), "events")))
        new = []
        for e in events:  # the first of two equal (user, event id) in one batch is the new one
            key = (e.user_id, e.event_id)
            new.append(key in inserted)
            inserted.discard(key)
        return new

    def events(self, user_id: str | None = None) -> Iterator[Event]:
        if user_id is None:
            rows = self._read(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq")
        else:
            rows = self._read(f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = %s ORDER BY seq", (user_id,))
        return (Event(*r) for r in rows)

    def has_user(self, user_id: str) -> bool:
        """Whether any row of the user is stored (events, profile or relations)."""
        return bool(self._read("SELECT 1 FROM users WHERE user_id = %(u)s UNION ALL SELECT 1 FROM events "
                               "WHERE user_id = %(u)s UNION ALL SELECT 1 FROM relations WHERE user_id = %(u)s "
                               "LIMIT 1", {"u": user_id}))

    def count_events(self) -> int:
        return self._read("SELECT count(*) FROM events")[0][0]

    # -- items ---------------------------------------------------------------------------------------
    def upsert_items(self, rows: list[dict]) -> None:
        now = time.time()
        values = [(str(r["item_id"]), json.dumps({k: v for k, v in r.items() if k != "item_id"},
                                                 ensure_ascii=False), now) for r in rows]

        def tx(c):
            with c.cursor() as cur:
                cur.executemany("INSERT INTO items (item_id, fields, updated, txid) VALUES (%s, %s, %s, "
                                "pg_current_xact_id()::text::bigint) ON CONFLICT (item_id) DO UPDATE SET "
                                "fields = excluded.fields, updated = excluded.updated, txid = excluded.txid",
                                values)
        self._write(tx, "items")

    def items(self) -> list[dict]:
        rows = self._read("SELECT item_id, fields FROM items ORDER BY added")
        return [{"item_id": i, **json.loads(f)} for i, f in rows]

    # -- relations -----------------------------------------------------------------------------------
    def set_relations(self, user_id: str, related: dict[str, float]) -> None:
        """Replace the user's relations (related user id -> weight) in one transaction."""
        def tx(c):
            c.execute("DELETE FROM relations WHERE user_id = %s", (user_id,))
            with c.cursor() as cur:
                cur.executemany("INSERT INTO relations (user_id, related_id, weight) VALUES (%s, %s, %s)",
                                [(user_id, v, float(w)) for v, w in related.items()])
        self._write(tx, "relations")

    def relations(self) -> dict[str, dict[str, float]]:
        """Every stored relation: user id -> {related user id: weight}, in the order they were set."""
        out: dict[str, dict[str, float]] = {}
        for u, v, w in self._read("SELECT user_id, related_id, weight FROM relations ORDER BY seq"):
            out.setdefault(u, {})[v] = w
        return out

    # -- users ---------------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> tuple[int, bool]:
        """Delete the user's events, profile and relations (theirs and those naming them) and leave keyed
        tombstones (one transaction), then rewrite the partitions that held them. Returns (events deleted,
        erased)."""
        key = self.user_key(user_id)

        def tx(c):
            parts = [r[0] for r in c.execute(" UNION ".join(
                [f"SELECT tableoid::regclass::text FROM {t} WHERE user_id = %(u)s" for t in USER_TABLES]
                + ["SELECT tableoid::regclass::text FROM relations WHERE related_id = %(u)s"]),
                {"u": user_id})]
            ids = [r[0] for r in c.execute("SELECT event_id FROM events WHERE user_id = %s", (user_id,))]
            c.execute("INSERT INTO forgotten_events SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                      ([self._hash("event", user_id, e) for e in ids],))
            n = {t: c.execute(f"DELETE FROM {t} WHERE user_id = %s", (user_id,)).rowcount for t in USER_TABLES}
            n = n["events"]
            c.execute("DELETE FROM relations WHERE related_id = %s", (user_id,))  # other users' rows naming them
            c.execute("INSERT INTO forgotten_users VALUES (%s, %s) ON CONFLICT (hash) DO UPDATE SET at = "
                      "excluded.at", (key, time.time()))
            # the rewrite each partition still needs, with the deleting transaction (newer wins)
            c.execute("INSERT INTO meta SELECT 'erasure_pending:' || p, pg_current_xact_id()::text "
                      "FROM unnest(%s::text[]) p ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                      (parts,))
            return n
        n = self._write(tx, "forget", key)
        self.erasure_pending = True
        return n, self.finish_erasure()

    def _pending_erasures(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self._read("SELECT key, value FROM meta WHERE key LIKE 'erasure_pending:%%'")]

    def finish_erasure(self) -> bool:
        """Rewrite each partition that held a forgotten user's rows (VACUUM FULL), unless a transaction
        that could still see them is open (then False: pending). True when no page holds them."""
        pending = self._pending_erasures()
        if pending:
            oldest = max(int(v) for _, v in pending)
            with self._conn() as conn:
                conn.autocommit = True  # VACUUM runs outside a transaction
                try:
                    # a snapshot from before the delete (other than this connection's): its rows would be
                    # copied into the rewritten pages
                    held = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_xmin "
                        "IS NOT NULL AND age(backend_xmin) >= age((%s::bigint %% 4294967296)::text::xid)",
                        (oldest,)).fetchone()[0]
                    held += conn.execute("SELECT count(*) FROM pg_replication_slots WHERE xmin IS NOT NULL"
                                         ).fetchone()[0]
                    if held:
                        return False
                    conn.execute(f"SET lock_timeout = '{ERASE_LOCK_TIMEOUT}'")
                    try:
                        tables = ", ".join(sorted({k.split(":", 1)[1] for k, _ in pending}))
                        conn.execute(f"VACUUM FULL {tables}")
                    except self._psycopg.errors.LockNotAvailable:
                        return False
                    finally:
                        conn.execute("RESET lock_timeout")
                    # only what was rewritten: a newer delete's mark stays for its own rewrite
                    conn.execute("DELETE FROM meta WHERE (key, value) IN (SELECT * FROM unnest(%s::text[], "
                                 "%s::text[]))", ([k for k, _ in pending], [v for _, v in pending]))
                finally:
                    conn.autocommit = False
        self.erasure_pending = bool(self._pending_erasures())
        return not self.erasure_pending

    def forgotten_among(self, user_ids: Iterable[str]) -> set[str]:
        user_ids = list(user_ids)
        keys = {r[0] for r in self._read("SELECT hash FROM forgotten_users")}
        return {u for u in user_ids if self.user_key(u) in keys} if keys else set()

    # -- the change feed -----------------------------------------------------------------------------
    def follow(self, on_change: Callable[[Change], None]) -> None:
        """Listen on the feed's own connection from now; the caller then loads its view inside
        ``reading``, and from that snapshot on each other process's change goes to ``on_change`` on a feed
        thread (those the snapshot holds are skipped)."""
        ready = threading.Event()
        self._listener = threading.Thread(target=self._listen, args=(on_change, ready), daemon=True,
                                          name="llmrec-feed")
        self._listener.start()
        if not ready.wait(CONNECT_TIMEOUT_S + 1):
            raise StoreUnavailable(f"the store {self.location} is unavailable: the change feed did not start")

    def _listen(self, on_change, ready: threading.Event) -> None:
        psycopg, first, pause = self._psycopg, True, 0.1
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if first:
                        ready.set()
                    else:  # notifications were missed while disconnected
                        with self._own_lock:
                            self._own.clear()
                        self._deliver(on_change, Change("resync"))
                    first, pause = False, 0.1
                    while not self._viewed.wait(0.5):  # notifications wait for the snapshot that sorts them
                        if self._closed.is_set():
                            return
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=64):
                            change = self._change(note.payload)
                            if change is not None:
                                self._deliver(on_change, change)
            except Exception as e:  # noqa: BLE001 - whatever stopped the feed, it reconnects and resyncs
                if not isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailable)):
                    log.exception("the store's change feed stopped; reconnecting")
                if self._closed.wait(pause):
                    return
                pause = min(2 * pause, 2.0)

    def _deliver(self, on_change, change: Change) -> None:
        """``on_change(change)``; a failure to reach the store is the feed's (it reconnects and resyncs),
        any other is logged and the feed goes on."""
        try:
            on_change(change)
        except StoreUnavailable:
            raise
        except Exception:  # noqa: BLE001 - a bug in applying one change must not stop the feed
            log.exception("applying a %s change from the store's feed", change.kind)

    def _change(self, payload: str) -> Change | None:
        """The change a notification stands for, or None when this process made it or already has it."""
        kind, xid_text, key = (payload.split(" ", 2) + ["", ""])[:3]
        xid = int(xid_text)
        with self._own_lock:
            if xid in self._own:
                self._own.discard(xid)
                return None
        if _visible(xid, self._snapshot):
            return None
        if kind == "events":
            rows = self._read(f"SELECT {EVENT_COLUMNS} FROM events WHERE txid = %s ORDER BY seq", (xid,))
            return Change("events", events=tuple(Event(*r) for r in rows))
        if kind == "items":
            rows = self._read("SELECT item_id, fields FROM items WHERE txid = %s ORDER BY added", (xid,))
            return Change("items", items=tuple({"item_id": i, **json.loads(f)} for i, f in rows))
        if kind == "forget":
            return Change("forget", user_key=key)
        if kind == "relations":
            return Change("relations")
        return None
