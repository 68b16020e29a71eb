"""The stores behind the service: SQLite and Postgres pass the same contract (events with ids unique per
user, items, users, keyed tombstones, erasure, meta, versioned schema); Postgres's own parts: the change
feed between two stores, the erasure checked in the table's pages, a server down at start."""

import sqlite3
import threading
import time

import psycopg
import pytest

from llmrec.errors import DataError, StoreUnavailable
from llmrec.pgstore import PgStore, redact
from llmrec.store import MIGRATIONS, ChangeFeed, Event, Store, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request):
    return request.param


@pytest.fixture
def make(kind, tmp_path, request):
    """make() -> a new store of the kind over one state (a second call reopens the same state)."""
    url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    opened = []

    def make():
        opened.append(open_store(url, tmp_path / "state"))
        return opened[-1]
    yield make
    for s in opened:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - closed by the test
            pass


def ev(eid, user="u1", item="i1", type_="view", value=None, ts=1.0):
    return Event(eid, user, item, type_, value, ts)


def test_events_are_idempotent_per_user(make):
    s = make()
    assert s.add_events([ev("e1"), ev("e2", item="i2"), ev("e1")]) == [True, True, False]
    assert s.add_events([ev("e1"), ev("e1", user="u2")]) == [False, True], "ids are unique per user"
    assert [(e.user_id, e.event_id) for e in s.events()] == [("u1", "e1"), ("u1", "e2"), ("u2", "e1")]
    assert [e.item_id for e in s.events("u1")] == ["i1", "i2"]
    assert s.count_events() == 3 and s.has_user("u2") and not s.has_user("nobody")
    s.add_events([ev("r", type_="rating", value=4.5, ts=7.25)])
    assert list(s.events("u1"))[-1] == Event("r", "u1", "i1", "rating", 4.5, 7.25)


def test_items_upsert_in_first_added_order(make):
    s = make()
    s.upsert_items([{"item_id": "b", "title": "B"}, {"item_id": "a", "title": "A", "year": "1999"}])
    s.upsert_items([{"item_id": "b", "title": "B2", "genres": "x"}])
    assert s.items() == [{"item_id": "b", "title": "B2", "genres": "x"},
                         {"item_id": "a", "title": "A", "year": "1999"}]


def test_forget_leaves_keyed_tombstones_only(make):
    s = make()
    s.add_events([ev("e1", user="gone"), ev("e2", user="gone"), ev("e1", user="stays")])
    assert s.forget_user("gone") == (2, True)
    assert not s.has_user("gone") and [e.user_id for e in s.events()] == ["stays"]
    assert s.add_events([ev("e1", user="gone"), ev("e3", user="gone")]) == [False, True], \
        "a late retry of an acknowledged event brings nothing back; a new one starts a new user"
    assert s.forgotten_among(["gone", "stays", "other"]) == {"gone"}
    assert s.user_key("gone") != s.user_key("stays") and "gone" not in s.user_key("gone")
    assert not s.erasure_pending
    s.close()
    again = make()  # the tombstones outlive a restart
    assert again.forgotten_among(["gone"]) == {"gone"} and again.count_events() == 2


def test_meta_and_schema_version(make):
    s = make()
    s.set_meta("source", "x")
    s.set_meta("source", "y")
    assert s.get_meta("source") == "y" and s.get_meta("none") is None
    assert s.get_meta("schema_version") == str(len(MIGRATIONS))
    s.close()
    make().close()  # reopening a current store migrates nothing


def test_newer_schema_is_refused_naming_both_versions(make, kind):
    s = make()
    s.set_meta("schema_version", "99")
    s.close()
    with pytest.raises(DataError, match=rf"schema version 99 .*newer llmrec.*up to {len(MIGRATIONS)}"):
        make()


def test_store_kinds(make, kind, tmp_path):
    s = make()
    assert isinstance(s, PgStore if kind == "postgres" else Store)
    assert isinstance(s, ChangeFeed) == (kind == "postgres"), "only a shared store has a feed"
    with s.reading():
        assert s.count_events() == 0
    with pytest.raises(DataError, match="--database"):
        open_store("mysql://x/y", tmp_path / "other")


def test_sqlite_store_from_before_versioning_is_migrated(tmp_path):
    folder = tmp_path / "old"
    Store(folder).close()
    db = sqlite3.connect(folder / Store.FILENAME)
    db.execute("DELETE FROM meta WHERE key = 'schema_version'")
    db.commit()
    db.close()
    s = Store(folder)
    assert s.get_meta("schema_version") == str(len(MIGRATIONS))
    s.close()


# -- Postgres only --------------------------------------------------------------------------------------
def test_postgres_down_at_start_names_the_url_without_password(tmp_path):
    url = "postgresql://llmrec:hunter2@127.0.0.1:1/llmrec"
    with pytest.raises(StoreUnavailable) as e:
        PgStore(url, tmp_path)
    assert "postgresql://llmrec:***@127.0.0.1:1/llmrec" in str(e.value) and "hunter2" not in str(e.value)
    assert redact("postgresql://u@h/db?password=pw&port=5") == "postgresql://u@h/db?password=***&port=5"


def test_another_secret_is_refused(pg_url, tmp_path):
    PgStore(pg_url, tmp_path / "a").close()
    with pytest.raises(DataError, match="secret.key: not the secret the store"):
        PgStore(pg_url, tmp_path / "b")


def test_feed_reports_the_other_store_changes_in_commit_order(pg_url, tmp_path):
    a, b = PgStore(pg_url, tmp_path), PgStore(pg_url, tmp_path)
    got, arrived = [], threading.Event()

    def on_change(c):
        got.append(c)
        if c.kind == "forget":
            arrived.set()
    a.add_events([ev("before")])  # committed before b follows: in b's loaded view, not in its feed
    b.follow(on_change)
    with b.reading():
        assert [e.event_id for e in b.events()] == ["before"]
    a.add_events([ev("x1"), ev("x2", item="i2")])
    b.add_events([ev("mine")])  # b's own: not reported back to it
    a.upsert_items([{"item_id": "n", "title": "New"}])
    a.forget_user("u1")
    assert arrived.wait(10), got
    assert [c.kind for c in got] == ["events", "items", "forget"]
    assert [e.event_id for e in got[0].events] == ["x1", "x2"]
    assert got[1].items == ({"item_id": "n", "title": "New"},)
    assert got[2].user_key == b.user_key("u1")
    a.close()
    b.close()


def _pages(conn, relation: str) -> bytes:
    n = conn.execute("SELECT pg_relation_size(%s) / 8192", (relation,)).fetchone()[0]
    return b"".join(conn.execute("SELECT get_raw_page(%s, %s)", (relation, i)).fetchone()[0] for i in range(n))


def _relations(conn) -> list[str]:
    """Every table, partition and index of the store's user data (and their TOAST tables)."""
    return [r[0] for r in conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 'i', 't') "
        "AND pg_relation_size(c.oid) > 0")]


def test_forgotten_user_is_gone_from_every_page(pg_url, tmp_path):
    """After the delete no query returns the user's rows, and no page of any table or index holds their id
    (read with pageinspect); before it, the pages did."""
    s = PgStore(pg_url, tmp_path)
    victim = "victim-7f3a9c"
    for j in range(30):  # the victim's rows between other users' rows on the same pages
        s.add_events([ev(f"e{j}", user=f"other{j}"), ev(f"e{j}", user=victim, item=f"i{j}"),
                      ev(f"f{j}", user=f"other{j}")])
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        before = b"".join(_pages(c, r) for r in _relations(c))
        assert victim.encode() in before, "the check can see the rows"
        assert s.forget_user(victim) == (30, True)
        for table in ("events", "users"):
            assert c.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s", (victim,)).fetchone()[0] == 0
        after = {r: _pages(c, r) for r in _relations(c)}
        assert not [r for r, b in after.items() if victim.encode() in b]
        assert b"other3" in b"".join(after.values()), "other users' rows stay"
    s.close()


def test_erasure_waits_for_an_older_snapshot(pg_url, tmp_path):
    s = PgStore(pg_url, tmp_path)
    s.add_events([ev("e1", user="held")])
    with psycopg.connect(pg_url) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 1  # a snapshot with the row
        n, erased = s.forget_user("held")
        assert (n, erased) == (1, False) and s.erasure_pending
        reader.rollback()
    deadline = time.monotonic() + 5
    while not s.finish_erasure():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not s.erasure_pending
    s.close()
    s = PgStore(pg_url, tmp_path)
    assert not s.erasure_pending
    s.close()


def test_delete_through_the_service_leaves_nothing_in_postgres(pg_url, tmp_path):
    """The privacy test in Postgres's terms: DELETE /users/{id}, then no query returns the user's rows, no page
    of any table or index holds their id, and a restart keeps them (and a base data set's user) forgotten."""
    from fastapi.testclient import TestClient
    from servicekit import dataset

    from llmrec import models, service
    from llmrec.server import create_app
    ds = dataset()

    def engine():
        return service.open_engine(models.get("itemknn").fit(ds, progress=False), tmp_path / "s", source="t",
                                   database=pg_url)
    e = engine()
    auth = {"Authorization": "Bearer k"}
    c = TestClient(create_app(e, api_key="k"), headers=auth)
    secret = "alice-secret-7431"
    c.post("/events", json=[{"user_id": secret, "item_id": i, "type": "like"} for i in ("s1", "s2", "s3")])
    c.post("/events", json=[{"user_id": f"bob{j}", "item_id": "s1", "type": "view"} for j in range(20)])
    assert c.post("/recommend", json={"user_id": secret}).status_code == 200
    r = c.delete(f"/users/{secret}")
    assert r.status_code == 200 and r.json() == {"user_id": secret, "deleted": True, "events_deleted": 3,
                                                 "erased": True}
    assert c.delete("/users/u5").status_code == 200
    assert c.post("/recommend", json={"user_id": secret}).status_code == 404
    e.store.close()
    e2 = engine()
    assert secret not in e2.user_ids(1000) and "u5" not in e2.user_ids(1000) and "bob3" in e2.user_ids(1000)
    e2.store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("events", "users"):
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s", (secret,)).fetchone()[0] == 0
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        pages = {r: _pages(conn, r) for r in _relations(conn)}
        assert not [r for r, b in pages.items() if secret.encode() in b]
        assert any(b"bob3" in b for b in pages.values()), "the check reads the pages that hold users"


def test_concurrent_event_calls_share_commits(kind, tmp_path, request):
    """Group commit: calls that arrive while a transaction is being written are stored together in the
    next one; each call is answered with its own counts, and a duplicate across two calls is stored once."""
    from servicekit import dataset

    from llmrec import models, service
    url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    e = service.open_engine(models.get("itemknn").fit(dataset(), progress=False), tmp_path / "s", source="t",
                            database=url)
    calls, real = [], e.store.add_events

    def slow(events):  # a slow disk: the others queue meanwhile
        calls.append(len(events))
        time.sleep(0.05)
        return real(events)
    e.store.add_events = slow
    out = [None] * 24
    barrier = threading.Barrier(len(out))

    def send(j):
        barrier.wait()
        out[j] = e.add_events([{"user_id": f"g{j % 6}", "item_id": "s1", "type": "view", "event_id": f"e{j}"},
                               {"user_id": "shared", "item_id": "s2", "type": "like", "event_id": "same"}])
    threads = [threading.Thread(target=send, args=(j,)) for j in range(len(out))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(calls) == 2 * len(out) and len(calls) < len(out) / 2, calls
    assert sorted(r["stored"] for r in out) == [1] * (len(out) - 1) + [2], "'same' stored by one call only"
    assert e.store.count_events() == len(out) + 1
    assert [i["item_id"] for i in e.history("shared")["items"]] == ["s2"]
    e.store.close()


def test_relations_are_replaced_kept_and_forgotten_both_ways(make):
    s = make()
    s.add_events([ev("e1", user="a"), ev("e1", user="b"), ev("e1", user="c")])
    s.set_relations("new", {"a": 1.0, "b": 0.5})
    s.set_relations("c", {"a": 2.0, "new": 1.0})
    s.set_relations("new", {"b": 0.5, "c": 3.0})  # replaces, in the order given
    assert s.relations() == {"new": {"b": 0.5, "c": 3.0}, "c": {"a": 2.0, "new": 1.0}}
    assert s.has_user("new")  # known through their relations alone
    s.close()
    s = make()  # durable
    assert s.relations() == {"new": {"b": 0.5, "c": 3.0}, "c": {"a": 2.0, "new": 1.0}}
    s.forget_user("new")  # their relations and those naming them
    assert s.relations() == {"c": {"a": 2.0}} and not s.has_user("new")
    s.set_relations("c", {})
    assert s.relations() == {}


def test_a_forgotten_users_relations_are_gone_from_every_page(pg_url, tmp_path):
    """The relations naming a forgotten user sit in other users' partitions: those are rewritten too."""
    s = PgStore(pg_url, tmp_path)
    victim = "victim-rel-5d1e"
    for j in range(20):
        s.add_events([ev("e", user=f"friend{j}")])
        s.set_relations(f"friend{j}", {victim: 1.0, f"friend{(j + 1) % 20}": 1.0})
    s.set_relations(victim, {"friend1": 1.0})
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        assert victim.encode() in b"".join(_pages(c, r) for r in _relations(c)), "the check can see the rows"
        assert s.forget_user(victim) == (0, True)
        after = {r: _pages(c, r) for r in _relations(c)}
        assert not [r for r, b in after.items() if victim.encode() in b]
    assert s.relations()["friend3"] == {"friend4": 1.0}
    s.close()


def test_feed_reports_relations(pg_url, tmp_path):
    a, b = PgStore(pg_url, tmp_path), PgStore(pg_url, tmp_path)
    got, arrived = [], threading.Event()
    b.follow(lambda c: (got.append(c), arrived.set()))
    with b.reading():
        pass
    a.set_relations("u", {"v": 1.0})
    assert arrived.wait(10) and [c.kind for c in got] == ["relations"]
    assert b.relations() == {"u": {"v": 1.0}}
    a.close()
    b.close()
