"""Attacks the hardening left open (the second round): each test here failed before its fix."""

import json
import socket
import threading
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from servicekit import catalogue, free_port, interactions, wait_healthy

from llmrec import models, service
from llmrec.data import build_dataset
from llmrec.errors import LLMRecError
from llmrec.server import check_access, create_app, host_name, serve_config

KEY = "attack-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


# Host names: the loopback names `llmrec serve` allows must be answered in every spelling a client uses
@pytest.mark.parametrize("host", ["[::1]:8000", "[::1]", "LOCALHOST:8000", "localhost.:8000", "127.0.0.1.",
                                  "127.0.0.1:8000"])
def test_allowed_host_names_in_every_spelling(engine, host):
    c = TestClient(create_app(engine, api_key=KEY, allowed_hosts=["127.0.0.1", "localhost", "::1"]))
    r = c.get("/health", headers={"Host": host})
    assert r.status_code == 200, (host, r.text)


@pytest.mark.parametrize("host", ["attacker.example", "localhost.attacker.example", "[::2]:80", "::2",
                                  "localhost:abc", "127.0.0.1:80, attacker.example", "", "[::1", "a b"])
def test_other_host_names_are_refused_with_json(engine, host):
    c = TestClient(create_app(engine, api_key=KEY, allowed_hosts=["127.0.0.1", "localhost", "::1"]))
    r = c.get("/health", headers={"Host": host})
    assert r.status_code == 400, host
    assert r.json()["field"] == "host"


def test_wildcard_allowed_hosts_still_work(engine):
    c = TestClient(create_app(engine, api_key=KEY, allowed_hosts=["*.example.com", "127.0.0.1"]))
    for host, status in (("api.example.com", 200), ("A.B.Example.com.:80", 200), ("example.com", 400),
                         ("evilexample.com", 400), ("127.0.0.1", 200)):
        assert c.get("/health", headers={"Host": host}).status_code == status, host


def test_two_host_headers_are_refused(engine):
    from starlette.testclient import TestClient as Raw
    app = create_app(engine, api_key=KEY, allowed_hosts=["127.0.0.1"])
    sent = []

    async def two_hosts(scope, receive, send):
        scope["headers"] = [(b"host", b"127.0.0.1"), (b"host", b"attacker.example")]
        sent.append(scope)
        await app(scope, receive, send)
    assert Raw(two_hosts).get("/health").status_code == 400 and sent


def test_host_name():
    assert host_name("[::1]:8000") == "::1" and host_name("::1") == "::1"
    assert host_name("Example.COM.:443") == "example.com"
    assert host_name("example.com:") is None and host_name("[::1]x") is None


# Authorization: one header, compared as the bytes a client sends
def test_two_authorization_headers_are_refused(engine):
    c = TestClient(create_app(engine, api_key=KEY))
    for pair in ([f"Bearer {KEY}", "Bearer wrong"], ["Bearer wrong", f"Bearer {KEY}"]):
        r = c.get("/users", headers=[("Authorization", pair[0]), ("Authorization", pair[1])])
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "authorization"
    assert c.get("/users", headers=AUTH).status_code == 200


def test_a_unicode_key_is_accepted_as_utf8(engine):
    key = "clé-ключ-🔑"
    c = TestClient(create_app(engine, api_key=key))
    raw = ("Bearer " + key).encode("utf-8")
    assert c.get("/users", headers=[(b"Authorization", raw)]).status_code == 200
    assert c.get("/users", headers=[(b"Authorization", b"Bearer cl\xe9")]).status_code == 401
    assert c.get("/users", headers=[(b"Authorization", raw[:-1])]).status_code == 401


@pytest.mark.parametrize("key", [" lead", "trail ", "new\nline", "tab\tkey", "del\x7f", "not-utf8-\udcff"])
def test_a_key_no_client_can_send_is_refused_at_start(key):
    with pytest.raises(LLMRecError, match="API key"):
        check_access(key, False, False)


# A user whose stored events all name items the served catalogue lacks is skipped on load, and must
# still be forgettable: their rows are on disk.
def test_user_skipped_on_load_can_still_be_forgotten(ds, tmp_path):
    e = service.open_engine(models.get("itemknn").fit(ds, progress=False), tmp_path / "s")
    e.add_events([{"user_id": "ghost", "item_id": "s0", "type": "like", "event_id": "g1"}])
    e.store.close()
    # the next start serves a catalogue without s0 (a new items file, a checkpoint)
    cat, log = catalogue(), interactions()
    small = build_dataset("small", log[log.item_id != "s0"], cat[cat.item_id != "s0"])
    e2 = service.open_engine(models.get("itemknn").fit(small, progress=False), tmp_path / "s")
    try:
        assert e2.skipped_on_load == 1
        c = TestClient(create_app(e2, api_key=KEY), headers=AUTH)
        r = c.get("/users/ghost/events")  # what is stored about them can be seen
        assert r.status_code == 200 and [x["event_id"] for x in r.json()["events"]] == ["g1"]
        r = c.delete("/users/ghost")
        assert r.status_code == 200, r.text
        assert r.json()["events_deleted"] == 1
        assert e2.store.count_events() == 0
        assert c.delete("/users/ghost").status_code == 404
        assert c.get("/users/ghost/events").status_code == 404
    finally:
        e2.store.close()


# Retrain while serving: what is written during the fit must not be undone by the swap
class _Gate:
    """Makes the next fit of the engine's model kind wait until released."""

    def __init__(self, monkeypatch):
        self.started, self.go = threading.Event(), threading.Event()
        real = models.get

        def get(name, config=None):
            m = real(name, config)
            fit = m.fit

            def slow_fit(*a, **kw):
                self.started.set()
                assert self.go.wait(10)
                return fit(*a, **kw)
            m.fit = slow_fit
            return m
        monkeypatch.setattr(models, "get", get)


def _retrain_in_background(engine):
    out = {}
    t = threading.Thread(target=lambda: out.update(engine.retrain()))
    t.start()
    return t, out


def test_item_replaced_during_retrain_keeps_its_new_text(engine, monkeypatch):
    gate = _Gate(monkeypatch)
    t, out = _retrain_in_background(engine)
    assert gate.started.wait(10)
    engine.upsert_item("s0", {"title": "Replaced while retraining"})
    gate.go.set()
    t.join(10)
    assert engine.item("s0")["title"] == "Replaced while retraining"
    assert out["swapped"] is False


def test_user_forgotten_during_retrain_leaves_nothing_in_the_new_model(engine, monkeypatch, tmp_path):
    gate = _Gate(monkeypatch)
    t = threading.Thread(target=lambda: engine.retrain(out=tmp_path / "ckpt"))
    t.start()
    assert gate.started.wait(10)
    engine.delete_user("u0")
    gate.go.set()
    t.join(10)
    m = engine.model
    assert m is not None and len(m.history_of("u0")) == 0
    saved = models.load_model(tmp_path / "ckpt")
    assert len(saved.history_of("u0")) == 0
    assert len(saved.history_of("u1")) > 0


def test_retrain_swaps_when_nothing_changed(engine):
    before = engine.model
    assert engine.retrain()["swapped"] is True
    assert engine.model is not before


@contextmanager
def _serving(app, **config):
    """``app`` on a real uvicorn in a thread, configured as ``llmrec serve`` does; yields the port."""
    port = free_port()
    srv = uvicorn.Server(serve_config(app, "127.0.0.1", port, **config))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        yield port
    finally:
        srv.should_exit = True
        t.join(10)


# HTTP methods: HEAD is GET without the body; a 405 says what is allowed
def test_head_is_answered_like_get(engine):
    with _serving(create_app(engine, api_key=KEY, public_user_data=True)) as port:
        for path in ("/health", "/", "/items/s0", "/users/u0/history"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), (path, head)
            assert body == b"", path


def test_method_not_allowed_says_what_is(engine):
    c = TestClient(create_app(engine, api_key=KEY))
    r = c.request("TRACE", "/health")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = c.get("/recommend")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]


# --protect-reads: /health tells who may do what, and the model, its source and the counts only with the key
def test_protected_health_says_nothing_about_the_data_without_the_key(engine):
    c = TestClient(create_app(engine, api_key=KEY, protect_reads=True))
    open_ = c.get("/health").json()
    assert open_["reads"] == "key" and open_["status"] == "ok"
    assert not {"model", "source", "users", "items", "events"} & set(open_)
    keyed = c.get("/health", headers=AUTH).json()
    assert keyed["users"] == 60 and keyed["source"] == "t"
    assert TestClient(create_app(engine, api_key=KEY)).get("/health").json()["users"] == 60


# A body sent without the JSON content type (curl -d sends a form type) is not read: say so
@pytest.mark.parametrize("ct", ["text/plain", "application/x-www-form-urlencoded", "text/json", None])
def test_body_of_another_content_type_gets_415_naming_it(engine, ct):
    c = TestClient(create_app(engine, api_key=KEY), headers=AUTH)
    headers = {} if ct is None else {"content-type": ct}
    for method, path, body in (("POST", "/recommend", '{"history": ["s0"]}'),
                               ("POST", "/events", '{"user_id": "u0", "item_id": "s0", "type": "like"}'),
                               ("PUT", "/items/s0", '{"title": "x"}')):
        r = c.request(method, path, content=body, headers=headers)
        assert r.status_code == 415, (path, ct, r.text)
        assert r.json()["field"] == "content-type" and "application/json" in r.json()["error"]
    for ok in ("application/json; charset=utf-8", "APPLICATION/JSON", "application/problem+json"):
        r = c.post("/recommend", content='{"history": ["s0"]}', headers={"content-type": ok})
        assert r.status_code == 200, (ok, r.text)
    r = c.post("/recommend", content='{"history": 3}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "history"


def test_compressed_body_gets_415_naming_the_encoding(engine):
    import gzip
    c = TestClient(create_app(engine, api_key=KEY), headers=AUTH)
    for enc in ("gzip", "deflate", "br", "GZIP"):
        r = c.post("/recommend", content=gzip.compress(b'{"history": ["s0"]}'),
                   headers={"content-type": "application/json", "content-encoding": enc})
        assert r.status_code == 415 and r.json()["field"] == "content-encoding", r.text
    r = c.post("/recommend", content=b'{"history": ["s0"]}',
               headers={"content-type": "application/json", "content-encoding": "identity"})
    assert r.status_code == 200


# The store holds user data: other accounts on the machine must not read it around the key
def test_store_files_are_the_owners_only(engine, tmp_path):
    import os
    import stat
    engine.add_events([{"user_id": "u0", "item_id": "s1", "type": "like"}])
    folder = engine.store.dir
    assert stat.S_IMODE(os.stat(folder).st_mode) & 0o077 == 0
    for f in folder.iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f
    # a store made before this (world-readable file) is closed up when opened
    from llmrec.store import Store
    old = tmp_path / "old"
    Store(old).close()
    os.chmod(old / Store.FILENAME, 0o644)
    Store(old).close()
    assert stat.S_IMODE(os.stat(old / Store.FILENAME).st_mode) == 0o600


def _trickle_until_closed(s: socket.socket, chunk: bytes, tries: int) -> bool:
    """Send ``chunk`` every quarter second, up to ``tries`` times, until the server closes the
    connection; whether it did."""
    s.settimeout(0.25)
    for _ in range(tries):
        try:
            s.sendall(chunk)
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_blank_lines_after_an_answer_do_not_hold_the_connection(engine):
    """httptools skips CRLFs between requests without starting one: a client sending one a second after
    its first answer held the connection for ever (no head timer, no keep-alive timer)."""
    with _serving(create_app(engine, api_key=KEY), header_timeout=1.0) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            closed = _trickle_until_closed(s, b"\r\n", 16)  # 4 s at most; the head timeout is 1 s
            assert closed, "still open after 4 s of blank lines"


# The page: never framed by another site (clickjacking likes and dislikes); JSON never sniffed as HTML
def test_page_cannot_be_framed_and_json_is_not_sniffed(engine):
    c = TestClient(create_app(engine, insecure=True, public_user_data=True))
    page = c.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    engine.upsert_item("x1", {"title": "<script>alert(1)</script>"})
    for r in (c.get("/items/x1"), c.post("/recommend", json={"history": ["s0"], "k": 100}),
              c.get("/items/nope")):
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-content-type-options"] == "nosniff", r.url


# Requests refused before the app (unparseable, head too big or too slow) get the same JSON error
@pytest.mark.parametrize("raw, status", [
    (b"GET /users/a b/history HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),   # a space in the path
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n b\r\n\r\n", 400),  # obsolete line folding
    (b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),                                                     # smuggling: both lengths
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow", 408),
])
def test_requests_refused_before_the_app_get_json(engine, raw, status):
    with _serving(create_app(engine, api_key=KEY), header_timeout=1.0) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d" % status), got[:200]
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body)["field"] in ("request", "head")
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


def test_a_body_sent_with_its_head_is_not_counted_as_head(engine):
    """The head limit counted whole reads: a request whose body came in the same read as its head (one
    write of head + body, as most clients do on loopback) got 431 once head + body passed 16 KB."""
    body = json.dumps({"history": ["s0"] * 5000, "exclude": ["s1"] * 5000, "k": 3}).encode()
    assert len(body) > 60_000
    head = (b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with _serving(create_app(engine, api_key=KEY)) as port:
        for requests in (head + body, (head + body) * 2):  # the second: also on a kept-alive connection
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(requests)
                got = b""
                while got.count(b"HTTP/1.1 ") < requests.count(b"POST ") or not got.endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            assert got.count(b"HTTP/1.1 200") == requests.count(b"POST "), got[:300]
        # a head that is itself too big is still refused
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: aaaaaaaaaa\r\n" * 2000 + b"\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("head", [
    b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: attacker.example\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: gzip\r\nContent-Length: 50\r\n\r\n",
])
def test_a_refusal_before_the_body_closes_the_connection(engine, head):
    """Refused before its body was read (too big, wrong Host, compressed), the connection stayed open to a
    body trickling in with no timer running on it."""
    with _serving(create_app(engine, api_key=KEY, allowed_hosts=["127.0.0.1"]), header_timeout=1.0) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head + b"{")
            got = b""
            while b"}" not in got:  # the refusal
                got += s.recv(65536)
            assert got.split(b" ")[1] in (b"413", b"400", b"415"), got[:200]
            assert b"connection: close" in got.lower()
            closed = _trickle_until_closed(s, b" ", 12)  # 3 s at most of a body trickling in
            assert closed, "the connection stayed open"


def test_a_transfer_coding_other_than_chunked_is_refused(engine):
    """"Transfer-Encoding: gzip, chunked" was read as an empty body (422 "body: Field required")."""
    with _serving(create_app(engine, api_key=KEY)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 400"), got[:200]
        assert json.loads(got.partition(b"\r\n\r\n")[2])["field"] == "transfer-encoding"
