"""The milvus index: Milvus Lite stores in a temporary folder and a ``milvus-lite server`` started here, the
same pymilvus client code as against a Milvus cluster. Agreement with the exact index (every metric,
exclusion both ways), adds and updates after the build, save / re-attach, the refusals (dimension, metric,
count, unreachable server, a password in the URI), the zero-shot model on it and the HTTP ``PUT /items``
path, and two processes sharing one store."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from fastapi.testclient import TestClient  # noqa: E402
from test_encoders import BagOfWords  # noqa: E402

from llmrec import encoders, index, milvus_index, models, service, synthetic  # noqa: E402
from llmrec.errors import LLMRecError  # noqa: E402
from llmrec.server import create_app  # noqa: E402

encoders.register("test-bow", BagOfWords, "bag-of-words stub for tests")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _clustered(n=3_000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.integers(0, 20, 30)] + 0.4 * rng.standard_normal((30, d)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("metric", index.METRICS)
def test_flat_collection_equals_the_exact_index_with_exact_exclusion(tmp_path, metric):
    x, q = _clustered()
    rng = np.random.default_rng(1)
    exclude = [rng.choice(len(x), n, replace=False) for n in rng.integers(0, 300, len(q))]
    exact = index.make("exact", metric).add(x)
    want_ids, want_scores = exact.search(q, 10, exclude=exclude)
    ix = index.make("milvus", metric, uri=tmp_path / "items.db")
    assert ix.add(x[:1_000]).add(x[1_000:]) is ix and len(ix) == len(x)  # streamed in blocks, two adds
    for mode in milvus_index.EXCLUSIONS:
        ix.exclusion = mode
        ids, scores = ix.search(q, 10, exclude=exclude)
        assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (len(q), 10)
        assert index.recall_at_k(ids, want_ids) == 1.0, mode
        np.testing.assert_allclose(scores, want_scores, atol=1e-4)
        assert all(not set(e) & set(r) for e, r in zip(exclude, ids, strict=True))
    # a history longer than the top-k limit: the filter path, still exact
    ix.exclusion = "auto"
    long = [np.arange(0, len(x) - 5)]
    ids, scores = ix.search(q[:1], 10, exclude=long)
    assert sorted(ids[0, :5]) == list(range(len(x) - 5, len(x))) and (ids[0, 5:] == -1).all()
    assert np.isneginf(scores[0, 5:]).all()


def test_auto_filters_beyond_the_top_k_limit(tmp_path, monkeypatch):
    x, q = _clustered(500)
    ix = index.make("milvus", uri=tmp_path / "items.db").add(x)
    want, _ = index.make("exact").add(x).search(q[:2], 10, exclude=[np.arange(100), np.arange(3)])
    calls = []
    real = ix._search
    monkeypatch.setattr(ix, "_search", lambda qq, limit, expr: calls.append((len(qq), limit, expr)) or
                        real(qq, limit, expr))
    monkeypatch.setattr(milvus_index, "TOPK_MAX", 50)
    ids, _ = ix.search(q[:2], 10, exclude=[np.arange(100), np.arange(3)])
    np.testing.assert_array_equal(ids, want)
    assert calls[0] == (1, 13, "") and calls[1][:2] == (1, 10) and calls[1][2].startswith("id not in [0, 1,")


def test_approximate_index_types_recall(tmp_path):
    x, q = _clustered(5_000, 32)
    want, _ = index.make("exact").add(x).search(q, 10)
    for kind, build, search in (("HNSW", {"M": 16, "efConstruction": 64}, {"ef": 64}),
                                ("IVF_FLAT", {"nlist": 64}, {"nprobe": 16})):
        ix = index.make("milvus", uri=tmp_path / f"{kind}.db", index_type=kind, build_params=build,
                        search_params=search).add(x)
        milvus_index.wait_for_lite_indexes(ix)  # searched through the index, not by brute force
        assert ix.client.describe_index(ix.collection, "vector")["params"] == build  # the build params arrived
        assert index.recall_at_k(ix.search(q, 10)[0], want) >= 0.9, kind


def test_add_and_upsert_after_the_build_are_found_at_once(tmp_path):
    x, q = _clustered(1_000)
    ix = index.make("milvus", uri=tmp_path / "items.db").add(x)
    ix.add(q[:1] * 10)  # item 1000: the query's own direction
    assert ix.search(q[:1], 1)[0][0, 0] == 1_000
    ix.upsert(np.array([5, 1_001]), np.stack([q[1], q[2]]))  # item 5 moved, item 1001 new
    ids, scores = ix.search(q[1:3], 1)
    assert ids[:, 0].tolist() == [5, 1_001] and len(ix) == 1_002
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    with pytest.raises(LLMRecError, match="new items must take the next indices from 1002"):
        ix.upsert(np.array([1_010]), q[:1])
    with pytest.raises(LLMRecError, match="vectors have 8 dimensions, the Milvus collection 'llmrec_items'.* 16"):
        ix.add(np.ones((2, 8), np.float32))


def test_save_and_attach_a_local_store_inside_the_checkpoint(tmp_path):
    x, q = _clustered(2_000)
    ix = index.make("milvus", "euclidean", uri=tmp_path / "work" / "items.db").add(x)
    path = ix.save(tmp_path / "ck" / "items.index")
    meta = json.loads((tmp_path / "ck" / "items.index.json").read_text())
    assert meta["kind"] == "milvus" and meta["params"]["uri"] == "items.milvus.db" and meta["n"] == 2_000
    assert (tmp_path / "ck" / "items.milvus.db").is_dir()
    back = index.load(path)
    assert (back.kind, back.metric, len(back), back.dim) == ("milvus", "euclidean", 2_000, 16)
    assert Path(back.uri) == tmp_path / "ck" / "items.milvus.db"
    for a, b in zip(ix.search(q, 10), back.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    # entries a service added since the save (same ids on re-adding) stay out of a reloaded model's answers
    back.add(q[:1])
    again = index.load(path)
    assert (len(again), again.stored) == (2_000, 2_001) and 2_000 not in again.search(q[:1], 5)[0]
    # fewer entries than the description: refused, naming both counts
    meta["n"] = 5_000
    (tmp_path / "ck" / "items.index.json").write_text(json.dumps(meta))
    with pytest.raises(LLMRecError, match="holds 2,001 vectors, the saved index 5,000"):
        index.load(path)


def test_refuses_another_dimension_or_metric_and_never_drops_it(tmp_path):
    x, _ = _clustered(300)
    index.make("milvus", "dot", uri=tmp_path / "items.db", collection="c").add(x)
    with pytest.raises(LLMRecError, match=r"'c' at .*items.db holds 16-dimensional vectors, the model's are "
                                          r"8-dimensional"):
        index.make("milvus", "dot", uri=tmp_path / "items.db", collection="c").add(x[:, :8])
    with pytest.raises(LLMRecError, match=r"uses metric IP, the model COSINE \(cosine\)"):
        index.make("milvus", "cosine", uri=tmp_path / "items.db", collection="c").add(x)
    assert len(index.make("milvus", "dot", uri=tmp_path / "items.db", collection="c").add(x[:10])) == 10


def test_unreachable_server_fails_fast_naming_it_without_a_password(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(LLMRecError, match=rf"Milvus at http://127.0.0.1:{port}: cannot connect within 3s"):
        index.make("milvus", uri=f"http://127.0.0.1:{port}", timeout=3)
    assert time.perf_counter() - t0 < 10
    with socket.socket() as silent:  # accepts connections, never answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        t0 = time.perf_counter()
        with pytest.raises(LLMRecError, match=rf"127.0.0.1:{silent.getsockname()[1]}: cannot connect within 2s"):
            index.make("milvus", uri=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=2)
        assert time.perf_counter() - t0 < 10
    with pytest.raises(LLMRecError) as e:
        index.make("milvus", uri=f"http://admin:hunter2@127.0.0.1:{port}")
    assert "hunter2" not in str(e.value) and "LLMREC_MILVUS_TOKEN" in str(e.value)
    with pytest.raises(LLMRecError, match="a path ending in .db"):
        index.make("milvus", uri="/tmp/items")
    assert milvus_index.redact("https://u:p@h:1/x") == "https://u:***@h:1/x"


# -- the zero-shot model and the service ----------------------------------------------------------------
@pytest.fixture(scope="module")
def topics():
    return synthetic.make(n_users=50, n_items=200, seed=1)


def test_zero_shot_on_milvus_answers_like_the_exact_index_and_saves(topics, tmp_path):
    exact = models.get("zero-shot", encoder="test-bow", cache=False).fit(topics, progress=False)
    m = models.get("zero-shot", encoder="test-bow", cache=False, index="milvus",
                   index_uri=str(tmp_path / "items.db")).fit(topics, progress=False)
    users = list(topics.users.ids()[:20])
    a, b = exact.recommend(users=users, k=10), m.recommend(users=users, k=10)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.item_ids, b.item_ids)]) >= 0.95  # ties aside
    for model in (exact, m):
        model.add_items([{"item_id": "new-1", "title": "quantum gardening robots"}])
        model.add_items([{"item_id": topics.catalog.ids.id(0), "title": "lunar beekeeping"}])  # updated
    assert m.recommend_text(["quantum gardening robots"], k=1).item_ids[0, 0] == "new-1"
    a, b = exact.recommend(users=users, k=10), m.recommend(users=users, k=10)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert m.index.search(m.item_vectors[:1], 1)[0][0, 0] == 0  # item 0's new vector, in place
    assert len(m._stale) == 0  # nothing scored beside the index
    m.save(tmp_path / "zs")
    back = models.load_model(tmp_path / "zs")
    assert back.index.kind == "milvus" and len(back.index) == 201
    assert Path(back.index.uri) == tmp_path / "zs" / "items.milvus.db"
    assert back.recommend_text(["quantum gardening robots"], k=1).item_ids[0, 0] == "new-1"
    # a store whose vectors disagree with the model's dimension: refused at load, naming both
    other = index.make("milvus", uri=tmp_path / "other.db").add(np.ones((201, 8), np.float32))
    with pytest.raises(LLMRecError, match="holds 8-dimensional vectors, the model's are 64-dimensional"):
        back.load_index(other.save(tmp_path / "o" / "items.index"))
    # reindex onto another collection of the same store
    m.reindex("milvus", index_collection="again")
    assert m.index.collection == "again" and len(m.index) == 201


def test_put_items_reaches_the_store_and_the_next_recommendation(topics, tmp_path):
    m = models.get("zero-shot", encoder="test-bow", cache=False, index="milvus",
                   index_uri=str(tmp_path / "items.db")).fit(topics, progress=False)
    e = service.open_engine(m, tmp_path / "state", source="topics")
    try:
        c = TestClient(create_app(e, insecure=True))
        r = c.put("/items/brand-new", json={"title": "velvet submarine orchestra", "genres": "Music"})
        assert r.status_code == 200 and r.json()["created"] and r.json()["scored_by_text"]
        assert len(m.index) == 201 and m.index.count() == 201  # in the store, not only in memory
        r = c.post("/recommend", json={"text": "velvet submarine orchestra", "k": 3})
        assert r.status_code == 200 and r.json()["items"][0]["item_id"] == "brand-new"
        r = c.post("/recommend", json={"history": ["brand-new"], "k": 3, "exclude_seen": False})
        assert r.json()["items"][0]["item_id"] == "brand-new"
        # a retrain fits beside the serving model: into its own collection, never the one being served
        served = m.index.collection
        assert e.retrain(progress=False)["swapped"]
        assert e.model is not m and e.model.index.collection == f"{served}_2" and m.index.count() == 201
        r = c.post("/recommend", json={"text": "velvet submarine orchestra", "k": 3})
        assert r.json()["items"][0]["item_id"] == "brand-new"
    finally:
        e.store.close()


# -- several processes over one store -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def milvus_server(tmp_path):
    """``milvus-lite server`` on a free loopback port: the store several processes share."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "srv"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_two_processes_share_one_store(milvus_server, tmp_path):
    x, q = _clustered(1_000)
    ix = index.make("milvus", uri=milvus_server, collection="shared").add(x)
    path = ix.save(tmp_path / "ck" / "items.index")
    np.save(tmp_path / "q.npy", q[:3])
    other = ("import sys, numpy as np; from llmrec import index; ix = index.load(sys.argv[1]); "
             "q = np.load(sys.argv[2]); ix.n = ix.stored; print(ix.search(q, 1)[0][:, 0].tolist())")

    def from_another_process() -> list[int]:
        out = subprocess.run([sys.executable, "-c", other, str(path), str(tmp_path / "q.npy")], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert from_another_process() == ix.search(q[:3], 1)[0][:, 0].tolist()
    ix.add(q[:1] * 3)  # item 1000, written by this process, read by the other one
    assert from_another_process()[0] == 1_000


def test_serve_index_options_reindex_a_checkpoint(topics, tmp_path):
    from llmrec import cli
    m = models.get("zero-shot", encoder="test-bow", cache=False).fit(topics, progress=False)
    m.save(tmp_path / "zs")
    store = tmp_path / "served.db"
    args = cli.build_parser().parse_args(["serve", "--model-dir", str(tmp_path / "zs"), "--index-uri", str(store),
                                          "--data-dir", str(tmp_path / "state")])
    engine, _ = cli._engine(args)
    try:
        ix = engine.model.index
        assert (ix.kind, Path(ix.uri), len(ix)) == ("milvus", store, len(topics.catalog))
        r = TestClient(create_app(engine, insecure=True)).put("/items/n1", json={"title": "amber kite festival"})
        assert r.status_code == 200 and ix.count() == len(topics.catalog) + 1
    finally:
        engine.store.close()
    bad = cli.build_parser().parse_args(["serve", "--index", "hnsw", "--index-uri", str(store)])
    with pytest.raises(LLMRecError, match="--index-uri / --index-collection go with --index milvus"):
        cli._engine(bad)


def test_a_local_store_is_one_process_s_and_says_what_to_run_instead(tmp_path):
    index.make("milvus", uri=tmp_path / "items.db").add(np.ones((3, 4), np.float32))
    code = ("import sys; from llmrec import index; from llmrec.errors import LLMRecError\n"
            "try: index.make('milvus', uri=sys.argv[1])\nexcept LLMRecError as e: print('REFUSED', e)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "items.db")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": SRC}, timeout=120).stdout
    assert "REFUSED" in out and "another process holds it" in out and "milvus-lite server --data-dir" in out
