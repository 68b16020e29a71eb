"""The service as an attacker tries it: each test here failed before its fix. Plus a property-based fuzz
test over every endpoint (generated bodies, ids and headers): never a 5xx, healthy afterwards."""

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servicekit import TextKNN, exchange, free_port, wait_healthy

from llmrec import cli, models, service
from llmrec.errors import ConfigError, DataError
from llmrec.server import create_app, serve_config
from llmrec.store import Store

KEY = "hardening-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "content-type": "application/json"}


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine, api_key=KEY), headers=AUTH)


@contextmanager
def serving(app, **config):
    """``app`` on a real uvicorn in a thread, as ``llmrec serve`` configures it; yields the port. (The
    in-process TestClient decodes a percent-encoded path twice, a real server once.)"""
    import uvicorn
    port = free_port()
    srv = uvicorn.Server(serve_config(app, "127.0.0.1", port, **config))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    wait_healthy(f"http://127.0.0.1:{port}")
    try:
        yield port
    finally:
        srv.should_exit = True
        t.join(10)


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as every other JSON parser does."""
    def bad(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=bad)


# 1. an item without a title --------------------------------------------------------------------------
def test_item_without_title_is_shown_by_its_id(ds, tmp_path):
    e = service.open_engine(models.get("itemknn").fit(ds, progress=False), tmp_path / "s")
    c = TestClient(create_app(e, api_key=KEY), headers=AUTH)
    assert c.put("/items/x-no-title", json={"description": "only a description"}).status_code == 200
    c.post("/events", json={"user_id": "toucher", "item_id": "x-no-title", "type": "like"})
    for body in ({"history": ["s0"], "k": 37}, {"user_id": "u0", "k": 37}):
        r = c.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        titles = {x["item_id"]: x["title"] for x in strict_json(r.text)["items"]}
        assert titles["x-no-title"] == "x-no-title"
    r = c.get("/users/toucher/history")
    assert r.status_code == 200 and strict_json(r.text)["items"][0]["title"] == "x-no-title"
    e.store.close()
    e2 = service.open_engine(models.get("itemknn").fit(ds, progress=False), tmp_path / "s")  # restart
    c2 = TestClient(create_app(e2, api_key=KEY), headers=AUTH)
    assert c2.post("/recommend", json={"history": ["s0"], "k": 37}).status_code == 200
    e2.store.close()


def test_cli_json_has_no_nan_for_untitled_items(tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,description\na,,a film about space\nb,Space Harbor,a space film\n"
                     "c,   ,cooking at home\n")
    rc = cli.main(["recommend", "--items", str(items), "--text", "space", "--encoder", "minilm-onnx",
                   "-k", "3", "--json"])
    assert rc == 0
    out = strict_json(capsys.readouterr().out)
    assert {x["item_id"]: x["title"] for x in out["items"]} == {"a": "a", "b": "Space Harbor", "c": "c"}


# 2. text queries do not stall the server ---------------------------------------------------------------
class SlowText(TextKNN):
    """A text model whose queries take ``delay`` seconds (a big language model on a busy CPU)."""

    delay = 1.5

    def recommend_text(self, *a, **kw):
        time.sleep(self.delay)
        return super().recommend_text(*a, **kw)


def test_slow_text_queries_hold_up_neither_the_event_loop_nor_user_queries(ds, tmp_path):
    e = service.open_engine(SlowText().fit(ds, progress=False), tmp_path / "s")
    app = create_app(e, api_key=KEY)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     headers=AUTH, timeout=30) as c:
            t0 = time.perf_counter()

            async def timed(coro):
                r = await coro
                return r, time.perf_counter() - t0
            texts = [asyncio.create_task(timed(c.post("/recommend", json={"text": f"科幻 {j}", "k": 3})))
                     for j in range(3)]
            await asyncio.sleep(0.3)  # the text queries are being encoded now
            user = await timed(c.post("/recommend", json={"user_id": "u0", "k": 3}))
            hist = await timed(c.post("/recommend", json={"history": ["s0"], "k": 3}))
            health = await timed(c.get("/health"))
            return [await t for t in texts], user, hist, health
    texts, user, hist, health = asyncio.run(go())
    for r, _ in [*texts, user, hist, health]:
        assert r.status_code == 200, r.text
    slowest_text = max(s for _, s in texts)
    assert slowest_text >= SlowText.delay
    for name, (_, s) in (("user", user), ("history", hist), ("health", health)):
        assert s < 0.3 + SlowText.delay / 2, f"{name} waited {s:.2f} s behind the text queries"
    e.store.close()


# 3. ids with "/" (and any other character an id may hold) ----------------------------------------------
@pytest.fixture
def http(engine):
    with serving(create_app(engine, api_key=KEY)) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as c:
            yield c


@pytest.mark.parametrize("uid", ["sl/ash", "a/b/history", "?x=1#f", "%2F", "  spaced  ", "用户/一", "a/../b", "..."])
def test_every_written_id_can_be_read_and_forgotten(http, uid):
    client = http
    item = f"item/{uid}"
    assert client.put(f"/items/{quote(item, safe='')}", json={"title": "slashed"}).status_code == 200
    assert client.get(f"/items/{quote(item, safe='')}").json()["title"] == "slashed"
    r = client.post("/events", json={"user_id": uid, "item_id": item, "type": "like", "event_id": "e/1"})
    assert r.status_code == 200, r.text
    path = quote(uid, safe="")
    h = client.get(f"/users/{path}/history")
    assert h.status_code == 200 and h.json()["user_id"] == uid, h.text
    assert [x["item_id"] for x in h.json()["items"]] == [item]
    assert client.get(f"/users/{path}/events").json()["events"][0]["event_id"] == "e/1"
    d = client.delete(f"/users/{path}")
    assert d.status_code == 200 and d.json()["user_id"] == uid
    assert client.get(f"/users/{path}/history").status_code == 404


def test_ids_the_service_cannot_serve_are_refused_at_write_time(client):
    for bad in ("", "   ", "tab\there", "nul\x00", "x" * 300, ".", ".."):
        r = client.post("/events", json={"user_id": bad, "item_id": "s1", "type": "like"})
        assert r.status_code == 422 and r.json()["field"] == "event.user_id", (bad, r.text)
    assert client.put("/items/a%09b", json={"title": "t"}).status_code == 422


# 4. no 500 from POST /events ---------------------------------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    (b'{"user_id":"u0","item_id":"s1","type":"rating","value":1' + b"0" * 400 + b"}", "event.value"),
    (b'{"user_id":"u0","item_id":"s1","type":"like","timestamp":1' + b"0" * 400 + b"}", "event.timestamp"),
    (b'{"user_id":"u\\ud800","item_id":"s1","type":"like"}', "event.user_id"),
    (b'{"user_id":"u0","item_id":"s1","type":"like","event_id":"e\\udfff"}', "event.event_id"),
    (b'[{"user_id":"u0","item_id":"s1","type":"like"},{"user_id":"u0","item_id":"s\\ud800","type":"like"}]',
     "events[1].item_id"),
    (b'{"events":[{"user_id":"u0","item_id":"s1","type":"like","bogus":1}]}', "events[0].bogus"),
])
def test_events_body_is_typed(client, engine, raw, field):
    n = engine.store.count_events()
    r = client.post("/events", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert engine.store.count_events() == n


def test_engine_refuses_the_same_without_http(engine):
    """The engine is an API of its own (the CLI, a script): it checks the same things."""
    for bad, field in (({"value": 10 ** 400, "type": "rating"}, "event.value"),
                       ({"user_id": "u\ud800"}, "event.user_id"),
                       ({"event_id": "e\udfff"}, "event.event_id")):
        ev = {"user_id": "u0", "item_id": "s1", "type": "like", **bad}
        with pytest.raises(DataError) as e:
            engine.add_events([ev])
        assert e.value.field == field
    with pytest.raises(DataError, match="not valid Unicode"):
        engine.recommend(text="x\ud800")


# 5. a deletion is complete when acknowledged, or says it is pending ----------------------------------
def _raw_files(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def test_deletion_while_another_reader_holds_a_snapshot(ds, tmp_path):
    folder = tmp_path / "s"
    e = service.open_engine(models.get("itemknn").fit(ds, progress=False), folder)
    c = TestClient(create_app(e, api_key=KEY), headers=AUTH)
    secret = "carol-secret-5512"
    c.post("/events", json=[{"user_id": secret, "item_id": f"s{j % 12}", "type": "view", "event_id": f"v{j}"}
                            for j in range(300)])
    reader = sqlite3.connect(folder / Store.FILENAME)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()  # holds its snapshot until it ends
    r = c.delete(f"/users/{secret}")
    assert r.status_code == 202 and r.json()["erased"] is False, r.text
    assert secret.encode() in _raw_files(folder), "the reader still sees the rows: they must be on disk"
    assert c.get("/health").json()["erasure_pending"] is True
    assert c.get(f"/users/{secret}/history").status_code == 404  # gone from the service at once
    reader.rollback()
    reader.close()
    deadline = time.monotonic() + 10
    while c.get("/health").json()["erasure_pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.get("/health").json()["erasure_pending"] is False
    assert secret.encode() not in _raw_files(folder)
    e.store.close()


def test_pending_erasure_survives_a_restart(ds, tmp_path):
    folder = tmp_path / "s"
    e = service.open_engine(models.get("itemknn").fit(ds, progress=False), folder)
    secret = "dave-secret-0042"
    e.add_events([{"user_id": secret, "item_id": "s1", "type": "like"}])
    reader = sqlite3.connect(folder / Store.FILENAME)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()
    assert e.delete_user(secret)["erased"] is False
    e.store.close()  # the process ends with the erasure pending
    reader.rollback()
    reader.close()
    e2 = service.open_engine(models.get("itemknn").fit(ds, progress=False), folder)
    assert e2.health()["erasure_pending"] is False
    assert secret.encode() not in _raw_files(folder)
    e2.store.close()


# 6 is in test_encoders (queries never reach the disk); here through the service -------------------------
def test_free_text_queries_write_nothing_to_disk(ds, tmp_path):
    m = models.get("zero-shot", encoder="minilm-onnx").fit(ds, progress=False)
    e = service.open_engine(m, tmp_path / "s")
    folder = m.encoder.folder
    before = sorted(p.name for p in folder.iterdir())
    for j in range(20):
        e.recommend(text=f"my private wish number {j}", k=3)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not [p for p in (tmp_path / "s").iterdir() if b"private wish" in p.read_bytes()]
    e.store.close()


# 7. --protect-reads without a key -----------------------------------------------------------------------
def test_cli_refuses_protect_reads_without_a_key(monkeypatch, capsys):
    monkeypatch.delenv("LLMREC_API_KEY", raising=False)
    t0 = time.perf_counter()
    assert cli.main(["serve", "--dataset", "ml-1m", "--protect-reads"]) == 2
    assert time.perf_counter() - t0 < 5, "refused before loading anything"
    assert "needs an API key" in capsys.readouterr().err


# 8. the record of forgotten users cannot be reversed ----------------------------------------------------
def test_forgotten_record_is_a_keyed_hash(engine, tmp_path):
    engine.delete_user("u7")
    db = sqlite3.connect(engine.store.path)
    hashes = {r[0] for r in db.execute("SELECT hash FROM forgotten_users")}
    candidates = [f"u{j}" for j in range(100)] + [str(j) for j in range(100_000)]
    plain = {hashlib.sha256(f"llmrec-forgotten:{u}".encode()).hexdigest() for u in candidates}
    plain |= {hashlib.sha256(u.encode()).hexdigest() for u in candidates}
    assert not hashes & plain, "an unkeyed hash: guessing ids recovers them"
    wrong = b"\0" * 32
    assert not hashes & {hashlib.blake2b(f"user\x00{u}".encode(), key=wrong, digest_size=32).hexdigest()
                         for u in candidates}
    right = (engine.store.dir / "secret.key").read_bytes()
    assert hashlib.blake2b(b"user\x00u7", key=right, digest_size=32).hexdigest() in hashes, "the test can fail"
    secret = engine.store.dir / "secret.key"
    assert secret.stat().st_mode & 0o077 == 0, "the secret is readable by others"


def test_store_written_by_an_older_version_is_migrated(ds, tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    db = sqlite3.connect(folder / Store.FILENAME)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE items (item_id TEXT PRIMARY KEY, fields TEXT NOT NULL, updated REAL NOT NULL);
        CREATE TABLE users (user_id TEXT PRIMARY KEY, first_seen REAL NOT NULL);
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL, item_id TEXT NOT NULL, type TEXT NOT NULL, value REAL, ts REAL NOT NULL);
        CREATE INDEX events_by_user ON events (user_id, seq);
        CREATE TABLE forgotten (user_hash TEXT PRIMARY KEY, at REAL NOT NULL);
    """)
    db.execute("INSERT INTO events (event_id, user_id, item_id, type, ts) VALUES ('e1', 'old-user', 's1', "
               "'like', 1)")
    db.execute("INSERT INTO forgotten VALUES (?, 1)", (hashlib.sha256(b"llmrec-forgotten:u5").hexdigest(),))
    db.commit()
    db.close()
    e = service.open_engine(models.get("itemknn").fit(ds, progress=False), folder)
    assert "u5" not in e.user_ids(1000), "a user forgotten by the old version stays forgotten"
    assert [x["item_id"] for x in e.history("old-user")["items"]][-1] == "s1"
    assert e.add_events([{"user_id": "other", "item_id": "s2", "type": "like", "event_id": "e1"}])["stored"] == 1
    e.store.close()
    db = sqlite3.connect(folder / Store.FILENAME)
    assert db.execute("SELECT COUNT(*) FROM forgotten_legacy").fetchone()[0] == 0, "re-keyed, unkeyed copy gone"
    e2 = service.open_engine(models.get("itemknn").fit(ds, progress=False), folder)
    assert "u5" not in e2.user_ids(1000)
    e2.store.close()


# 9. event ids are per user and do not outlive a deletion ----------------------------------------------
def test_event_ids_are_scoped_per_user(client):
    a = client.post("/events", json={"user_id": "ann", "item_id": "s1", "type": "like", "event_id": "1"})
    b = client.post("/events", json={"user_id": "bob", "item_id": "s2", "type": "like", "event_id": "1"})
    assert a.json()["stored"] == 1 and b.json()["stored"] == 1, "another user's event id hid bob's event"
    assert [x["item_id"] for x in client.get("/users/bob/history").json()["items"]] == ["s2"]


def test_retry_after_deletion_brings_nothing_back(client):
    evs = [{"user_id": "erin", "item_id": f"c{j}", "type": "like", "event_id": f"erin-{j}"} for j in range(3)]
    assert client.post("/events", json=evs).json()["stored"] == 3
    assert client.delete("/users/erin").status_code == 200
    r = client.post("/events", json=evs[:2])  # a client retrying requests whose answers it lost
    assert r.status_code == 200 and r.json()["stored"] == 0 and r.json()["duplicates"] == 2
    assert client.get("/users/erin/history").status_code == 404
    # a new event (a new id) is a new beginning: only it is known
    assert client.post("/events", json={"user_id": "erin", "item_id": "g1", "type": "like",
                                        "event_id": "erin-new"}).json()["stored"] == 1
    assert [x["item_id"] for x in client.get("/users/erin/history").json()["items"]] == ["g1"]


# 10. values that are not numbers, not JSON, or not plausible --------------------------------------------
@pytest.mark.parametrize("raw, field", [
    (b'{"text": NaN}', "text"),
    (b'{"text": Infinity}', "text"),
    (b'{"history": ["s1"], "filters": {"genres": NaN}}', "filters.genres"),
    (b'{"history": [NaN]}', "history[0]"),
    (b'{"user_id": -Infinity}', "user_id"),
])
def test_nan_and_infinity_are_refused_in_queries(client, raw, field):
    r = client.post("/recommend", content=raw, headers=JSON)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_nan_in_item_text_is_refused(client):
    r = client.put("/items/q", content=b'{"title": NaN}', headers=JSON)
    assert r.status_code == 422 and r.json()["field"] == "title"
    assert client.get("/items/q").status_code == 404


@pytest.mark.parametrize("event, field", [
    ({"type": "rating", "value": 1e308}, "event.value"),
    ({"type": "rating", "value": -1e308}, "event.value"),
    ({"type": "rating", "value": 11}, "event.value"),
    ({"type": "like", "timestamp": 32503680000}, "event.timestamp"),  # the year 3000
    ({"type": "like", "timestamp": -1}, "event.timestamp"),
    ({"type": "like", "timestamp": time.time() + 3600}, "event.timestamp"),
])
def test_implausible_values_are_refused(client, event, field):
    r = client.post("/events", json={"user_id": "u0", "item_id": "s1", **event})
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_rating_scale_and_clock_skew_are_config(ds, tmp_path):
    cfg = service.ServiceConfig(rating_min=1, rating_max=5, max_clock_skew=7200)
    e = service.open_engine(models.get("itemknn").fit(ds, progress=False), tmp_path / "s", config=cfg)
    ok = {"user_id": "u0", "item_id": "s1", "type": "rating", "value": 5, "timestamp": time.time() + 3600}
    assert e.add_events([ok])["stored"] == 1
    for bad in ({"value": 0}, {"value": 6}, {"timestamp": time.time() + 3 * 3600}):
        with pytest.raises(DataError):
            e.add_events([{**ok, **bad}])
    e.store.close()
    with pytest.raises(ConfigError, match="rating_min"):
        service.ServiceConfig(rating_min=5, rating_max=1)
    with pytest.raises(ConfigError, match="max_clock_skew"):
        service.ServiceConfig(max_clock_skew=float("nan"))


# also: PUT replaces, PATCH merges; Host names; request head and body bounded ---------------------------
def test_put_replaces_and_patch_merges(client):
    client.put("/items/m1", json={"title": "First", "genres": "Sci-Fi", "description": "old words"})
    client.put("/items/m1", json={"title": "Second"})
    assert client.get("/items/m1").json() == {"item_id": "m1", "title": "Second"}
    client.patch("/items/m1", json={"genres": "Garden"})
    assert client.get("/items/m1").json() == {"item_id": "m1", "title": "Second", "genres": "Garden"}
    client.patch("/items/m1", json={"genres": None, "description": "new words"})
    assert client.get("/items/m1").json() == {"item_id": "m1", "title": "Second", "description": "new words"}
    assert client.patch("/items/m1", json={"title": None, "description": None}).status_code == 422
    assert client.patch("/items/m1", json={"title": "x"}, headers={"Authorization": ""}).status_code == 401


def test_only_the_configured_host_names_are_answered(engine):
    c = TestClient(create_app(engine, insecure=True, allowed_hosts=["127.0.0.1", "localhost"]),
                   base_url="http://127.0.0.1")
    assert c.get("/health").status_code == 200
    assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
    r = c.post("/events", json={"user_id": "u0", "item_id": "s1", "type": "like"},
               headers={"Host": "attacker.example"})
    assert r.status_code == 400
    assert c.get("/users/u0/events", headers={"Host": "rebound.attacker.example:8000"}).status_code == 400


@pytest.fixture
def real_server(engine):
    """The app on a real uvicorn with ``llmrec serve``'s config, short time limits."""
    with serving(create_app(engine, api_key=KEY, body_timeout=1.0), header_timeout=1.0) as port:
        yield port


def test_huge_request_head_is_refused(real_server):
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
    out, _ = exchange(real_server, [head] + [b"a" * 65536] * 128 + [b"\r\n\r\n"])  # 8 MB
    assert out.startswith(b"HTTP/1.1 431"), out[:80]
    assert httpx.get(f"http://127.0.0.1:{real_server}/health").status_code == 200


def test_stalled_head_and_body_are_cut_off(real_server):
    out, s = exchange(real_server, [b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appli"])
    assert out.startswith(b"HTTP/1.1 408") and s < 4, (out[:80], s)
    body = b'{"history": ["s1"], "k": 3}'
    head = (b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body) + 100))
    out, s = exchange(real_server, [head, body])  # 100 bytes promised that never come
    assert out.startswith(b"HTTP/1.1 408") and s < 4, (out[:80], s)
    assert b"connection: close" in out.lower()
    # a slow but steady client within the limit is served
    out, _ = exchange(real_server, [head.replace(b"%d" % (len(body) + 100), b"%d" % len(body)),
                                     body[:10], body[10:]], pause=0.2)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]


# the fuzz test -------------------------------------------------------------------------------------------
ids = st.one_of(st.text(min_size=0, max_size=12), st.sampled_from(["u0", "s1", "g2", "sl/ash", "..", "%2F"]),
                st.integers(-2, 10 ** 30))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10 ** 30), 10 ** 30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=12)
event = st.fixed_dictionaries({}, optional={
    "user_id": ids, "item_id": ids, "type": st.sampled_from(["like", "view", "dislike", "rating", "love"]),
    "value": scalars, "event_id": ids, "timestamp": scalars, "extra": scalars})
recommend = st.fixed_dictionaries({}, optional={
    "user_id": ids, "history": st.lists(ids, max_size=4), "text": st.text(max_size=30), "k": scalars,
    "filters": st.dictionaries(st.sampled_from(["genres", "year", "colour"]), json_values, max_size=2),
    "exclude": st.lists(ids, max_size=3), "exclude_seen": scalars, "explain": scalars})
item = st.fixed_dictionaries({}, optional={f: st.one_of(scalars, st.text(max_size=30))
                                           for f in ("title", "description", "tags", "genres", "year", "colour")})
bodies = {"/recommend": st.one_of(recommend, json_values), "/events": st.one_of(
    event, st.lists(event, max_size=4), st.fixed_dictionaries({"events": st.lists(event, max_size=3)}), json_values),
    "/items": st.one_of(item, json_values)}
headers = st.dictionaries(st.sampled_from(["authorization", "content-type", "x-forwarded-for", "accept",
                                           "content-encoding", "host"]),
                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                  max_size=40).map(str.strip),
                          max_size=3)
ROUTES = [("POST", "/recommend", "/recommend"), ("POST", "/events", "/events"), ("PUT", "/items/{id}", "/items"),
          ("PATCH", "/items/{id}", "/items"), ("GET", "/items/{id}", None), ("GET", "/users", None),
          ("GET", "/users/{id}/history", None), ("GET", "/users/{id}/events", None),
          ("DELETE", "/users/{id}", None), ("GET", "/health", None), ("GET", "/", None)]


@pytest.fixture(scope="module")
def fuzz_client(ds, tmp_path_factory):
    """A real server: ids in paths are decoded as a client's would be."""
    e = service.open_engine(TextKNN().fit(ds, progress=False), tmp_path_factory.mktemp("fuzz"), source="t")
    app = create_app(e, api_key=KEY, allowed_hosts=["127.0.0.1", "localhost"])
    with serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        yield c, e
    e.store.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), data=st.data(), keyed=st.booleans(), hdrs=headers,
       raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_fuzz_every_endpoint(fuzz_client, route, data, keyed, hdrs, raw):
    c, engine = fuzz_client
    method, template, body_kind = route
    pid = data.draw(ids, label="id")
    url = template.replace("{id}", quote(str(pid), safe=""))
    h = {**hdrs, **(AUTH if keyed else {})}
    kw = {}
    if body_kind is not None:
        if raw is not None:
            kw["content"] = raw
        else:
            kw["content"] = json.dumps(data.draw(bodies[body_kind], label="body"), allow_nan=True).encode()
        h.setdefault("content-type", "application/json")
    r = c.request(method, url, headers=h, **kw)
    assert r.status_code < 500, (method, url, kw, h, r.status_code, r.text[:300])
    if method == "POST" and template == "/events" and r.status_code == 200:
        sent = _sent_events(kw["content"])
        if r.json()["stored"] < len(sent):  # retries of events of users deleted meanwhile stay deleted
            return
        for eid_user in {x["user_id"] for x in sent}:
            got = c.get(f"/users/{quote(str(eid_user), safe='')}/history", headers=AUTH)
            assert got.status_code == 200, ("an id was written that cannot be read", eid_user, got.text)


def _sent_events(content: bytes) -> list[dict]:
    body = json.loads(content)
    body = body["events"] if isinstance(body, dict) and "events" in body else body
    return body if isinstance(body, list) else [body]


def test_fuzzed_server_is_healthy_afterwards(fuzz_client):
    c, engine = fuzz_client
    assert c.get("/health").json()["status"] == "ok"
    r = c.post("/recommend", json={"history": ["s1"], "k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert c.post("/recommend", json={"text": "科幻", "k": 2}).status_code == 200
