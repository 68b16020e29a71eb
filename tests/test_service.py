"""The service: engine (framework-free) and its HTTP contract, auth, bad input, feedback, privacy."""

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient
from servicekit import TextKNN, dataset

from llmrec import models, pipeline, service
from llmrec.errors import LLMRecError, UnknownNameError
from llmrec.server import create_app

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def ds():
    return dataset()


def make_engine(ds, folder, model="itemknn"):
    m = TextKNN().fit(ds, progress=False) if model == "text" else models.get(model).fit(ds, progress=False)
    return service.open_engine(m, folder, source="topics")


@pytest.fixture
def engine(ds, tmp_path):
    e = make_engine(ds, tmp_path / "state")
    yield e
    e.store.close()


@pytest.fixture
def client(engine):
    """Sends the key: user data and writes need it (each auth test makes its own clients)."""
    return TestClient(create_app(engine, api_key=KEY), headers=AUTH)


# -- the engine, no HTTP ---------------------------------------------------------------------------
def test_engine_matches_model_records(engine):
    out = engine.recommend(user_id="u0", k=5, explain=True)
    hist = [x["item_id"] for x in engine.history("u0")["items"]]  # the engine owns the histories
    want = engine.model.recommend(histories=[hist], k=5, explain=True).records(engine.catalog)
    assert out["user_id"] == "u0" and out["model"] == "itemknn"
    assert [r["item_id"] for r in out["items"]] == [r["item_id"] for r in want]
    assert all("explanation" in r for r in out["items"])


def test_engine_owns_the_histories_and_forgets_a_user_in_one_place(ds, tmp_path):
    """The engine takes the model's histories at start (the model keeps none) and passes each query's in;
    deleting a user leaves no copy in the model, and a text model never needs a private call."""
    m = models.get("itemknn").fit(ds, progress=False)
    before = m.recommend(users=["u0"], k=5).item_ids[0].tolist()
    e = service.open_engine(m, tmp_path / "s", source="t")
    assert all(len(m.history_of(u)) == 0 for u in m.users.ids())
    assert [r["item_id"] for r in e.recommend(user_id="u0", k=5)["items"]] == before
    e.delete_user("u0")
    assert "u0" not in e.user_ids(1000) and len(m.history_of("u0")) == 0
    assert isinstance(TextKNN(), models.TextQueries) and not isinstance(m, models.TextQueries)


def test_engine_imports_no_web_framework():
    import subprocess
    import sys
    code = ("import sys, llmrec.service, llmrec.store; "
            "print('fastapi' in sys.modules, 'starlette' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_restart_loses_nothing(ds, tmp_path):
    e1 = make_engine(ds, tmp_path / "s")
    e1.add_events([{"user_id": "new-user", "item_id": "s1", "type": "like", "event_id": "a"},
                   {"user_id": "new-user", "item_id": "s2", "type": "view", "event_id": "b"},
                   {"user_id": "u0", "item_id": "c3", "type": "dislike", "event_id": "c"}])
    e1.upsert_item("x1", {"title": "A new film", "genres": "Sci-Fi"})
    before = (e1.history("new-user"), e1.history("u0"), e1.recommend(user_id="u0", k=10))
    e1.store.close()
    e2 = make_engine(ds, tmp_path / "s")  # a fresh model: everything else comes from the store
    assert (e2.history("new-user"), e2.history("u0"), e2.recommend(user_id="u0", k=10)) == before
    assert e2.item("x1")["title"] == "A new film"
    assert e2.store.count_events() == 3


def test_retrain_folds_events_in(ds, tmp_path):
    from llmrec.models import load_model
    e = make_engine(ds, tmp_path / "s")
    # a new user who likes two sci-fi items: before retraining itemknn has no co-occurrence for x1
    e.upsert_item("x1", {"title": "Brand new", "genres": "Sci-Fi"})
    e.add_events([{"user_id": f"n{j}", "item_id": i, "type": "like"}
                  for j in range(5) for i in ("s0", "x1")])
    assert e.recommend(history=["s0"], k=40)["items"][-1]["item_id"] != "x1" or True
    res = e.retrain(out=tmp_path / "ckpt")
    assert res["users"] == 65 and res["items"] == 37
    top = [r["item_id"] for r in e.recommend(history=["s0"], k=3)["items"]]
    assert "x1" in top, "after retraining the new item co-occurs with s0"
    m = load_model(tmp_path / "ckpt")
    assert len(m.catalog) == 37 and "n0" in m.users
    # serving the checkpoint on the same store replays the events without doubling any history
    e.store.close()
    e2 = service.open_engine(m, tmp_path / "s")
    assert [x["item_id"] for x in e2.history("n0")["items"]] == ["s0", "x1"]


# -- HTTP contract -----------------------------------------------------------------------------------
def test_health_docs_and_page(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["items"] == 36 and h["writes"] == "key"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/recommend", "/events", "/items/{item_id}", "/users/{user_id}/history", "/users/{user_id}"):
        assert path in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "llmrec" in page.text and "/recommend" in page.text


def test_recommend_user_history_and_filters(client, engine):
    r = client.post("/recommend", json={"user_id": "u0", "k": 4, "explain": True})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"user_id", "model", "items"} and len(body["items"]) == 4
    assert set(body["items"][0]) == {"item_id", "score", "title", "explanation"}
    seen = {x["item_id"] for x in client.get("/users/u0/history").json()["items"]}
    assert not seen & {x["item_id"] for x in body["items"]}
    r = client.post("/recommend", json={"history": ["s0", "s1"], "k": 3, "filters": {"genres": "garden"}})
    assert r.status_code == 200 and all(x["item_id"].startswith("g") for x in r.json()["items"])
    r = client.post("/recommend", json={"history": [], "k": 2, "filters": {"genres": ["cooking", "Garden"]},
                                        "exclude": ["c0"]})
    assert r.status_code == 200 and "c0" not in {x["item_id"] for x in r.json()["items"]}
    r = client.post("/recommend", json={"user_id": "u0", "k": 3, "exclude_seen": False})
    assert r.status_code == 200


def test_item_endpoints(client):
    assert client.get("/items/s0").json()["genres"] == "Sci-Fi"
    assert client.get("/items/nope").status_code == 404
    r = client.put("/items/z9", json={"title": "一部新的科幻电影", "genres": "Sci-Fi"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["created"] is True
    assert client.get("/items/z9").json()["title"] == "一部新的科幻电影"
    r = client.put("/items/z9", json={"title": "renamed", "genres": "Sci-Fi"}, headers=AUTH)
    assert r.json()["created"] is False and client.get("/items/z9").json()["title"] == "renamed"
    # itemknn scores items added after fitting 0, but they are in the catalogue at once
    r = client.post("/recommend", json={"history": ["s0"], "k": 5, "filters": {"genres": "sci-fi"},
                                        "exclude": [f"s{j}" for j in range(12)]})
    assert [x["item_id"] for x in r.json()["items"]] == ["z9"]
    # a text query to a model without text support: a clear 4xx naming the field
    r = client.post("/recommend", json={"text": "科幻"})
    assert r.status_code == 400 and r.json()["field"] == "text" and "cannot" in r.json()["error"]


def test_text_model_query_and_new_item(ds, tmp_path):
    e = make_engine(ds, tmp_path / "s", model="text")
    c = TestClient(create_app(e, insecure=True))
    r = c.post("/recommend", json={"text": "我最近喜欢看科幻电影", "k": 5, "explain": True})
    assert r.status_code == 200, r.text
    assert all(x["item_id"].startswith("s") for x in r.json()["items"])
    r = c.put("/items/new", json={"title": "园艺新书：多肉植物", "genres": "Garden"})
    assert r.json()["scored_by_text"]
    r = c.post("/recommend", json={"text": "多肉植物", "k": 1})
    assert r.json()["items"][0]["item_id"] == "new"


def test_feedback_changes_next_recommendation(client):
    first = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()["items"]
    top = first[0]["item_id"]
    r = client.post("/events", json={"user_id": "u1", "item_id": top, "type": "dislike"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["stored"] == 1
    after = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()["items"]
    assert top not in {x["item_id"] for x in after}
    # not even when seen items are allowed back
    again = client.post("/recommend", json={"user_id": "u1", "k": 36, "exclude_seen": False}).json()["items"]
    assert top not in {x["item_id"] for x in again}
    hist = client.get("/users/u1/history").json()
    assert top in {x["item_id"] for x in hist["disliked"]}
    # a like appends to the history at once and changes the scores
    liked = after[2]["item_id"]
    client.post("/events", json=[{"user_id": "u1", "item_id": liked, "type": "like"}], headers=AUTH)
    assert client.get("/users/u1/history").json()["items"][-1]["item_id"] == liked
    later = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()["items"]
    assert liked not in {x["item_id"] for x in later} and later != after
    # a brand-new user exists after their first event
    client.post("/events", json={"events": [{"user_id": "fresh", "item_id": "g1", "type": "rating",
                                             "value": 5}]}, headers=AUTH)
    assert client.post("/recommend", json={"user_id": "fresh", "k": 3}).status_code == 200


def test_events_are_idempotent(client):
    ev = {"user_id": "u2", "item_id": "c1", "type": "click", "event_id": "ev-1"}
    assert client.post("/events", json=ev, headers=AUTH).json() == {"stored": 1, "duplicates": 0,
                                                                     "event_ids": ["ev-1"]}
    assert client.post("/events", json=[ev, ev], headers=AUTH).json()["duplicates"] == 2
    events = client.get("/users/u2/events").json()["events"]
    assert [e["event_id"] for e in events] == ["ev-1"]


def test_bad_batch_stores_nothing(client, engine):
    n = engine.store.count_events()
    r = client.post("/events", headers=AUTH, json=[{"user_id": "u3", "item_id": "c1", "type": "like"},
                                                   {"user_id": "u3", "item_id": "nope", "type": "like"}])
    assert r.status_code == 404 and r.json()["field"] == "events[1].item_id"
    assert engine.store.count_events() == n


def test_delete_user_forgets_everything(ds, tmp_path):
    e = make_engine(ds, tmp_path / "s")
    c = TestClient(create_app(e, api_key=KEY), headers=AUTH)
    secret = "alice-secret-7431"
    c.post("/events", headers=AUTH, json=[{"user_id": secret, "item_id": i, "type": "like"}
                                          for i in ("s1", "s2", "s3")])
    assert c.post("/recommend", json={"user_id": secret}).status_code == 200
    r = c.delete(f"/users/{secret}", headers=AUTH)
    assert r.status_code == 200 and r.json()["events_deleted"] == 3
    for path in (f"/users/{secret}/history", f"/users/{secret}/events"):
        assert c.get(path).status_code == 404
    assert c.post("/recommend", json={"user_id": secret}).status_code == 404
    assert c.delete(f"/users/{secret}", headers=AUTH).status_code == 404
    # a user of the base data set: gone now and after a restart
    assert c.delete("/users/u5", headers=AUTH).status_code == 200
    assert c.get("/users/u5/history").status_code == 404
    e.store.close()
    e2 = make_engine(ds, tmp_path / "s")
    for u in ("u5", secret):
        with pytest.raises(Exception, match="unknown user"):
            e2.history(u)
    assert "u5" not in e2.user_ids(1000)
    e2.store.close()
    # not a byte of the deleted id left in the database files
    for f in (tmp_path / "s").iterdir():
        assert secret.encode() not in f.read_bytes(), f.name
    db = sqlite3.connect(tmp_path / "s" / "llmrec.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (secret,)).fetchone()[0] == 0


def test_relations_recommend_a_new_user_at_once_and_survive_a_restart(ds, tmp_path):
    from llmrec import community
    e = make_engine(ds, tmp_path / "s")
    c = TestClient(create_app(e, api_key=KEY), headers=AUTH)
    assert c.post("/recommend", json={"user_id": "newbie"}).status_code == 404  # no history, no relations
    r = c.put("/users/newbie/relations", json=["u0", {"user_id": "u3", "weight": 2}])
    assert r.status_code == 200 and r.json() == {"user_id": "newbie", "relations": 2}
    out = c.post("/recommend", json={"user_id": "newbie", "k": 5, "explain": True}).json()
    assert out["user_id"] == "newbie" and out["from_relations"] == 2
    hist = {u: e._user_history(u) for u in ("u0", "u3")}
    want = community.recommend(e.model, [{"u0": 1.0, "u3": 2.0}], k=5, histories=hist)
    assert [x["item_id"] for x in out["items"]] == list(want.item_ids[0])
    assert all(x["explanation"]["reason"] for x in out["items"])
    assert c.get("/users/newbie/relations").json()["relations"] == [{"user_id": "u0", "weight": 1.0},
                                                                     {"user_id": "u3", "weight": 2.0}]
    assert e.health()["users_with_relations"] == 1
    # a dislike is honoured; the first positive event makes it an ordinary user with a history
    c.post("/events", json={"user_id": "newbie", "item_id": out["items"][0]["item_id"], "type": "dislike"})
    again = c.post("/recommend", json={"user_id": "newbie", "k": 5}).json()
    assert out["items"][0]["item_id"] not in [x["item_id"] for x in again["items"]] and again["from_relations"]
    e.store.close()
    e2 = make_engine(ds, tmp_path / "s")
    assert e2.relations("newbie")["relations"][1] == {"user_id": "u3", "weight": 2.0}
    assert e2.recommend(user_id="newbie", k=5)["items"] == again["items"]
    e2.add_events([{"user_id": "newbie", "item_id": "c1", "type": "like"}])
    assert "from_relations" not in e2.recommend(user_id="newbie", k=5)
    assert e2.set_relations("newbie", []) == {"user_id": "newbie", "relations": 0}
    assert e2.relations("newbie")["relations"] == []
    e2.store.close()


def test_bad_relations_are_refused_naming_the_field(client):
    cases = [(["u0", "ghost"], 404, "relations[1]"), (["newbie"], 422, "relations[0]"),
             ([{"user_id": "u0", "weight": 0}], 422, "relations[0].weight"),
             (["u1", {"user_id": "u0", "weight": "heavy"}], 422, "relations[1].weight"),
             ([{"user_id": "u0", "colour": "red"}], 422, "relations[0].colour"),
             ([{"weight": 1}], 422, "relations[0].user_id"), ([["u0"]], 422, "relations[0]"),
             ({"relations": ["u0"]}, 422, "body"), (["u0"] * 1001, 422, "body")]
    for body, status, field in cases:
        r = client.put("/users/newbie/relations", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["field"] == field, (body, r.json())
    assert client.get("/users/newbie/relations").status_code == 404  # nothing was stored
    assert TestClient(create_app(client.app.state.engine, api_key=KEY)).put(
        "/users/newbie/relations", json=["u0"]).status_code == 401


def test_delete_user_forgets_their_relations_both_ways(ds, tmp_path):
    e = make_engine(ds, tmp_path / "s")
    c = TestClient(create_app(e, api_key=KEY), headers=AUTH)
    secret = "bob-secret-9120"
    c.post("/events", json={"user_id": secret, "item_id": "s1", "type": "like"})
    assert c.put("/users/newbie/relations", json=[secret, "u1"]).status_code == 200
    assert c.put("/users/lonely-secret-5531/relations", json=[secret]).status_code == 200
    assert c.put(f"/users/{secret}/relations", json=["u2"]).status_code == 200
    assert c.delete(f"/users/{secret}").status_code == 200
    assert c.get(f"/users/{secret}/relations").status_code == 404
    assert c.get("/users/newbie/relations").json()["relations"] == [{"user_id": "u1", "weight": 1.0}]
    assert c.get("/users/lonely-secret-5531/relations").status_code == 404  # their only relation is gone
    # a user known only by their relations can be forgotten too
    assert c.put("/users/only-relations-7702/relations", json=["u1"]).status_code == 200
    assert c.delete("/users/only-relations-7702").status_code == 200
    assert c.post("/recommend", json={"user_id": "only-relations-7702"}).status_code == 404
    e.store.close()
    e2 = make_engine(ds, tmp_path / "s")
    assert e2.relations("newbie")["relations"] == [{"user_id": "u1", "weight": 1.0}]
    e2.store.close()
    for f in (tmp_path / "s").iterdir():
        for gone in (secret, "only-relations-7702"):
            assert gone.encode() not in f.read_bytes(), (f.name, gone)
    db = sqlite3.connect(tmp_path / "s" / "llmrec.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM relations WHERE user_id = ? OR related_id = ?",
                      (secret, secret)).fetchone()[0] == 0


# -- auth ------------------------------------------------------------------------------------------------
def test_auth(engine):
    ev = {"user_id": "u0", "item_id": "s1", "type": "view"}
    keyed = TestClient(create_app(engine, api_key=KEY))
    assert keyed.post("/events", json=ev).status_code == 401
    assert keyed.post("/events", json=ev).headers["www-authenticate"] == "Bearer"
    assert keyed.post("/events", json=ev, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert keyed.post("/events", json=ev, headers={"Authorization": KEY}).status_code == 401
    assert keyed.post("/events", json=ev, headers=AUTH).status_code == 200
    assert keyed.delete("/users/u0").status_code == 401
    assert keyed.put("/items/q", json={"title": "t"}).status_code == 401
    assert keyed.post("/retrain").status_code == 401
    # user data needs the key by default; recommendations for a history or a text, and items, do not
    assert keyed.post("/recommend", json={"user_id": "u0"}).status_code == 401
    assert keyed.post("/recommend", json={"user_id": "u0"}, headers=AUTH).status_code == 200
    for path in ("/users", "/users/u0/history", "/users/u0/events"):
        assert keyed.get(path).status_code == 401, path
        assert keyed.get(path, headers=AUTH).status_code == 200, path
    assert keyed.post("/recommend", json={"history": ["s1"]}).status_code == 200
    assert keyed.get("/items/s1").status_code == 200 and keyed.get("/health").json()["user_data"] == "key"
    public = TestClient(create_app(engine, api_key=KEY, public_user_data=True))
    assert public.get("/users").status_code == 200 and public.get("/users/u0/events").status_code == 200
    assert public.post("/events", json=ev).status_code == 401, "public user data does not open writes"
    unkeyed = TestClient(create_app(engine, insecure=True))  # no key: user data closed, not open
    r = unkeyed.get("/users")
    assert r.status_code == 403 and "--public-user-data" in r.json()["error"]
    assert unkeyed.post("/recommend", json={"user_id": "u0"}).status_code == 403
    closed = TestClient(create_app(engine))  # no key, not insecure: writes refused
    r = closed.post("/events", json=ev, headers=AUTH)
    assert r.status_code == 403 and "LLMREC_API_KEY" in r.json()["error"]
    assert TestClient(create_app(engine, insecure=True)).post("/events", json=ev).status_code == 200
    guarded = TestClient(create_app(engine, api_key=KEY, protect_reads=True))
    assert guarded.post("/recommend", json={"user_id": "u0"}).status_code == 401
    assert guarded.post("/recommend", json={"user_id": "u0"}, headers=AUTH).status_code == 200
    assert guarded.post("/recommend", json={"history": ["s1"]}).status_code == 401
    assert guarded.get("/items/s1").status_code == 401 and guarded.get("/health").json()["reads"] == "key"
    # --protect-reads without a key would leave every read open: refused, not a silent no-op
    with pytest.raises(LLMRecError, match="needs an API key"):
        create_app(engine, protect_reads=True)
    with pytest.raises(LLMRecError, match="needs an API key"):
        create_app(engine, insecure=True, protect_reads=True)


# -- bad input: all 4xx, a message naming the field, and healthy afterwards ------------------------------
BAD_RECOMMEND = [
    {},                                              # none of user_id/history/text
    {"user_id": "u0", "history": ["s1"]},            # two of them
    {"user_id": "nobody"},                           # unknown user
    {"history": ["s1", "nope"]},                     # unknown item
    {"history": "s1"},                               # wrong type
    {"history": [["s1"]]},
    {"user_id": ["u0"]},
    {"user_id": None, "text": ""},                   # empty text
    {"text": "x" * 5000},                            # text too long
    {"user_id": "u0", "k": 0},
    {"user_id": "u0", "k": -3},
    {"user_id": "u0", "k": 10_000},
    {"user_id": "u0", "k": "10"},
    {"user_id": "u0", "k": 2.5},
    {"user_id": "u0", "k": True},
    {"user_id": "u0", "explain": "yes"},
    {"user_id": "u0", "exclude_seen": 1},
    {"user_id": "u0", "filters": {"colour": "red"}},  # unknown field
    {"user_id": "u0", "filters": {"genres": []}},
    {"user_id": "u0", "filters": "genres=Comedy"},
    {"user_id": "u0", "exclude": ["nope"]},
    {"user_id": "u0", "surprise": 1},                # unknown key
    {"history": ["s1"] * 6000},                      # too long
    {"user_id": "u" * 1000},
    [1, 2, 3],
]
BAD_EVENTS = [
    {},
    {"user_id": "u0", "item_id": "s1"},                           # no type
    {"user_id": "u0", "item_id": "s1", "type": "love"},
    {"user_id": "u0", "item_id": "nope", "type": "like"},
    {"user_id": "", "item_id": "s1", "type": "like"},
    {"user_id": {"a": 1}, "item_id": "s1", "type": "like"},
    {"user_id": "u0", "item_id": "s1", "type": "rating"},         # rating without value
    {"user_id": "u0", "item_id": "s1", "type": "rating", "value": "five"},
    {"user_id": "u0", "item_id": "s1", "type": "like", "timestamp": "yesterday"},
    {"user_id": "u0", "item_id": "s1", "type": "like", "extra": 1},
    [],
    {"events": []},
    [{"user_id": "u0", "item_id": "s1", "type": "like"}] * 1001,
    "like",
    42,
]


def test_bad_input_all_4xx_then_healthy(client, engine):
    n_events = engine.store.count_events()
    results = []
    for body in BAD_RECOMMEND:
        results.append(("recommend", body, client.post("/recommend", json=body)))
    for body in BAD_EVENTS:
        results.append(("events", body, client.post("/events", json=body, headers=AUTH)))
    js = {"content-type": "application/json"}
    raw = [
        ("bad json", client.post("/recommend", content=b'{"user_id": ', headers=js)),
        ("not utf-8", client.post("/recommend", content=b'{"user_id": "\xff\xfe"}', headers=js)),
        ("not utf-8 event", client.post("/events", content=b"\xc3\x28", headers={**AUTH, **js})),
        ("text/plain", client.post("/recommend", content=b"user_id=u0",
                                   headers={"content-type": "text/plain"})),
        ("no body", client.post("/recommend")),
        ("huge body", client.post("/recommend", content=b'{"text": "' + b"a" * (2 << 20) + b'"}',
                                  headers={"content-type": "application/json"})),
        ("huge chunked", client.post("/events", headers={**AUTH, "content-type": "application/json"},
                                     content=iter([b"[" + b" " * 65536] * 40))),
        ("NaN", client.post("/events", content=b'{"user_id":"u0","item_id":"s1","type":"rating","value":NaN}',
                            headers={**AUTH, "content-type": "application/json"})),
        ("no key", client.post("/events", json={"user_id": "u0", "item_id": "s1", "type": "like"},
                               headers={"Authorization": ""})),
        ("bad item put", client.put("/items/q", json={"title": 5.5, "colour": "red"}, headers=AUTH)),
        ("empty item", client.put("/items/q", json={}, headers=AUTH)),
        ("unknown item", client.get("/items/does-not-exist")),
        ("unknown history", client.get("/users/nobody/history")),
        ("unknown delete", client.delete("/users/nobody", headers=AUTH)),
        ("long path id", client.get("/items/" + "x" * 300)),
        ("bad limit", client.get("/users?limit=-1")),
        ("bad limit type", client.get("/users?limit=many")),
        ("wrong method", client.get("/recommend")),
        ("no route", client.get("/nowhere")),
    ]
    results += [("raw", name, r) for name, r in raw]
    assert len(results) >= 30
    for kind, body, r in results:
        assert 400 <= r.status_code < 500, (kind, str(body)[:80], r.status_code, r.text[:300])
        if r.status_code not in (404, 405) or kind != "raw":
            msg = r.json()
            assert msg["error"], (kind, body, msg)
    # a message that names the field
    named = {json.dumps(b)[:60]: r.json().get("field") for k, b, r in results if k == "recommend"}
    assert named[json.dumps({"user_id": "u0", "k": 10_000})] == "k"
    assert named[json.dumps({"history": ["s1", "nope"]})] == "history[1]"
    assert named[json.dumps({"user_id": "u0", "filters": {"colour": "red"}})] == "filters.colour"
    assert engine.store.count_events() == n_events, "no bad event was stored"
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/recommend", json={"user_id": "u0"}).status_code == 200


def test_itemknn_single_query_fast_path_matches_sparse(ds):
    """Serving scores one history at a time through a dense copy of the similarities; it must agree with
    the sparse batch path, also after items were added to the catalogue."""
    import numpy as np
    import pandas as pd
    m = models.get("itemknn").fit(ds, progress=False)
    m.catalog, _ = m.catalog.upsert(pd.DataFrame({"item_id": ["late1", "late2"], "title": ["a", "b"]}))
    hists = [np.array([0, 5, 7, 36]), np.array([], dtype=np.int64), np.array([3, 3, 9])]
    batch = m.score_histories(hists + [np.array([1])])
    for b, h in enumerate(hists):
        one = m.score_histories([h])
        assert one.shape == (1, 38) and one.dtype == np.float32
        np.testing.assert_allclose(one[0], batch[b], rtol=1e-5, atol=1e-6)


def test_cli_retrain_then_serve_checkpoint(tmp_path, capsys):
    """`llmrec retrain` on the state a service left behind writes a checkpoint that loads."""
    from servicekit import write_files

    from llmrec import cli
    from llmrec.models import load_model
    items, inter = write_files(tmp_path)
    m, source = pipeline.obtain(items=str(items), interactions=str(inter), model="itemknn")
    e = service.open_engine(m, tmp_path / "state", source)
    e.add_events([{"user_id": "cli-user", "item_id": "g3", "type": "purchase"}])
    e.store.close()
    rc = cli.main(["retrain", "--items", str(items), "--interactions", str(inter), "--model", "itemknn",
                   "--data-dir", str(tmp_path / "state"), "--out", str(tmp_path / "ckpt"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["users"] == 61 and out["out"] == str(tmp_path / "ckpt")
    assert "cli-user" in load_model(tmp_path / "ckpt").users
    # bad combinations are one-line errors, exit 2
    assert cli.main(["retrain", "--model-dir", str(tmp_path / "ckpt"), "--items", str(items),
                     "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["serve", "--items", str(items), "--model", "itemknn"]) == 2  # itemknn needs a log
    err = capsys.readouterr().err
    assert "needs an interaction log" in err


# -- batching concurrent requests ------------------------------------------------------------------
def _same_answer(got: dict, want: dict, q) -> None:
    """Same items in the same order; scores equal up to float rounding (a batch is one matrix product)."""
    strip = lambda a: {**a, "items": [{k: v for k, v in r.items() if k != "score"} for r in a["items"]]}
    assert strip(got) == strip(want), q
    assert [r["score"] for r in got["items"]] == pytest.approx([r["score"] for r in want["items"]], rel=1e-5)


def _queries():
    return [dict(user_id="u0", k=5), dict(user_id="u1", k=3, exclude=["s0", "c1"]),
            dict(history=["g0", "g1"], k=4), dict(user_id="nobody", k=5), dict(user_id="u2", k=7),
            dict(user_id="u3", k=2, filters={"genres": "Garden"}), dict(user_id="u4", k=0),
            dict(user_id="u5", k=4, exclude_seen=False)]


@pytest.mark.parametrize("model", ["itemknn", "zero-shot"])
def test_recommend_many_equals_one_by_one(ds, tmp_path, model):
    e = make_engine(ds, tmp_path / "state", model=model)
    e.add_events([{"user_id": "u2", "item_id": e.recommend(user_id="u2", k=1)["items"][0]["item_id"],
                   "type": "dislike"}])
    batch = e.recommend_many(_queries())
    for q, got in zip(_queries(), batch):
        try:
            want = e.recommend(**q)
        except Exception as err:  # noqa: BLE001
            assert type(got) is type(err) and str(got) == str(err), (q, got)
            continue
        _same_answer(got, want, q)
    assert isinstance(batch[3], UnknownNameError) and "nobody" in str(batch[3])
    assert isinstance(batch[6], LLMRecError) and "k must be" in str(batch[6])
    assert len(batch[4]["items"]) == 7 and len(batch[1]["items"]) == 3
    e.store.close()


def test_concurrent_http_requests_are_batched_and_answered_alike(engine):
    import asyncio

    import httpx
    app = create_app(engine, api_key=KEY)
    calls = []
    many = engine.recommend_many
    engine.recommend_many = lambda qs: calls.append(len(qs)) or many(qs)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     headers=AUTH) as c:
            return await asyncio.gather(*(c.post("/recommend", json=q) for q in _queries()))
    responses = asyncio.run(go())
    assert max(calls) > 1, calls  # at least some requests were scored together
    for q, r in zip(_queries(), responses):
        try:
            want = engine.recommend(**q)
        except LLMRecError:
            assert 400 <= r.status_code < 500, (q, r.text)
            continue
        assert r.status_code == 200, (q, r.text)
        _same_answer(r.json(), json.loads(json.dumps(want)), q)


def test_serve_takes_the_data_and_model_options_of_the_other_commands(tmp_path):
    """Column mappings, --encoder and --set reach the served model, as with evaluate / train."""
    from servicekit import catalogue, interactions

    from llmrec import cli
    catalogue().rename(columns={"item_id": "sku", "title": "name"}).to_csv(tmp_path / "items.csv", index=False)
    interactions().rename(columns={"user_id": "uid"}).to_csv(tmp_path / "log.csv", index=False)
    args = cli.build_parser().parse_args([
        "serve", "--items", str(tmp_path / "items.csv"), "--interactions", str(tmp_path / "log.csv"),
        "--item-columns", "item_id=sku,title=name", "--columns", "user_id=uid", "--model", "zero-shot",
        "--encoder", "minilm-onnx", "--set", "index=hnsw", "--set", "recency=0.7",
        "--data-dir", str(tmp_path / "state")])
    engine, _ = cli._engine(args)
    cfg = engine.model.config
    assert (cfg.encoder, cfg.index, cfg.recency) == ("minilm-onnx", "hnsw", 0.7)
    assert engine.item("s0")["title"].startswith("Alien Worlds") and "u0" in engine.user_ids(100)
    engine.store.close()
    bad = cli.build_parser().parse_args(["serve", "--model-dir", str(tmp_path), "--set", "k=1"])
    with pytest.raises(LLMRecError, match="a checkpoint is its model"):
        cli._engine(bad)
    assert cli.main(["serve", "--dataset", "ml-100k", "--set", "nonsense=1", "--model", "itemknn"]) == 2
