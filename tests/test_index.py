"""Similarity and vector indexes: the worked example, each metric by hand, exact search, and the approximate
indexes' recall against the exact one."""

import numpy as np
import pytest

from llmrec import index
from llmrec.errors import LLMRecError


def test_cosine_worked_example():
    # by hand: 1.8875 / (1.3454 * 1.4089) = 0.99586
    assert index.cosine((0.6, 0.8, 0.9), (0.7, 0.75, 0.85)) == pytest.approx(0.99586, abs=5e-6)
    s = index.similarity(np.array([[0.6, 0.8, 0.9]]), np.array([[0.7, 0.75, 0.85]]), "cosine")
    assert s.dtype == np.float32 and s[0, 0] == pytest.approx(0.99586, abs=5e-6)


def test_metrics_by_hand():
    q = np.array([[1.0, 0.0]])
    x = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(index.similarity(q, x, "dot"), [[2.0, 0.0, 1.0]])
    np.testing.assert_allclose(index.similarity(q, x, "cosine"), [[1.0, 0.0, 2 ** -0.5]], rtol=1e-6)
    np.testing.assert_allclose(index.similarity(q, x, "euclidean"), [[-1.0, -(2 ** 0.5), -1.0]], rtol=1e-6)
    with pytest.raises(LLMRecError, match="unknown metric 'manhattan'"):
        index.similarity(q, x, "manhattan")


@pytest.mark.parametrize("metric", index.METRICS)
def test_exact_search_orders_excludes_and_pads(metric):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    ix = index.make("exact", metric).add(x)
    ids, scores = ix.search(q, 5)
    assert ids.shape == scores.shape == (3, 5) and ids.dtype == np.int64 and scores.dtype == np.float32
    full = index.similarity(q, x, metric)
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :5])
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    ex = [ids[0, :2], np.array([], np.int64), np.arange(48)]
    ids2, scores2 = ix.search(q, 5, exclude=ex)
    assert not set(ids[0, :2]) & set(ids2[0])
    np.testing.assert_array_equal(ids2[1], ids[1])
    assert set(ids2[2, :2]) == {48, 49} and (ids2[2, 2:] == -1).all() and np.isneginf(scores2[2, 2:]).all()


def test_search_input_errors():
    ix = index.make("exact").add(np.eye(3))
    with pytest.raises(LLMRecError, match="k must be at least 1"):
        ix.search(np.eye(3), 0)
    with pytest.raises(LLMRecError, match="exclude has 1 rows for 3 queries"):
        ix.search(np.eye(3), 1, exclude=[np.array([0])])
    with pytest.raises(LLMRecError, match="unknown index kind"):
        index.make("annoy")


@pytest.mark.parametrize("kind,params", [
    ("ivf", {"nlist": 256, "nprobe": 48}),
    pytest.param("hnsw", {"hnsw_m": 16, "ef_construction": 40, "ef_search": 128}, marks=pytest.mark.slow)])
def test_approximate_recall_at_10_on_100k_random_vectors(kind, params):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100_000, 16)).astype(np.float32)
    q = rng.standard_normal((200, 16)).astype(np.float32)
    exact_ids, _ = index.make("exact").add(x).search(q, 10)
    approx = index.make(kind, **params).add(x)
    ids, scores = approx.search(q, 10)
    assert index.recall_at_k(ids, exact_ids) >= 0.95
    # scores are cosines, like the exact index's
    np.testing.assert_allclose(scores[:, 0], index.similarity(q[:, None][:, 0], x[ids[:, :1].ravel()],
                                                              "cosine").diagonal(), atol=1e-4)
    ex = [exact_ids[r, :3] for r in range(len(q))]
    ids2, _ = approx.search(q, 10, exclude=ex)
    assert all(not set(e) & set(r) for e, r in zip(ex, ids2, strict=True))


# -- large-catalogue paths: quantisers, memory, saving, incremental adds ----------------------------------
def _clustered(n=20_000, d=32, n_clusters=50, seed=0):
    """Vectors around ``n_clusters`` centres (like text embeddings, unlike uniform noise), and queries
    drawn the same way."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.integers(0, n_clusters, 100)] + 0.4 * rng.standard_normal((100, d)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("kind,params,floor", [
    ("hnsw", {"hnsw_m": 16, "ef_search": 64}, 0.95),
    ("hnsw", {"hnsw_m": 16, "ef_search": 64, "quantizer": "sq8"}, 0.9),
    ("ivf", {"nprobe": 16}, 0.95),
    ("ivf", {"nprobe": 16, "quantizer": "sq8"}, 0.9),
    ("ivf", {"nprobe": 16, "quantizer": "pq", "pq_m": 8}, 0.5)])
def test_approximate_recall_on_clustered_vectors(kind, params, floor):
    x, q = _clustered(5_000 if params.get("quantizer") == "pq" else 20_000)  # PQ training takes longer
    exact_ids, _ = index.make("exact").add(x).search(q, 10)
    ids, _ = index.make(kind, **params).add(x).search(q, 10)
    assert index.recall_at_k(ids, exact_ids) >= floor


def test_exact_batched_by_memory_equals_one_batch():
    x, q = _clustered(5_000, 16)
    small = index.ExactIndex(memory_mb=0.5).add(x)  # 0.5 MB / (16 B x 5,000 items): 6 queries a batch
    assert small.batch_size == 6
    one = index.ExactIndex(batch_size=len(q)).add(x)
    ex = [np.arange(r, r + 5) for r in range(len(q))]
    for a, b in zip(small.search(q, 10, exclude=ex), one.search(q, 10, exclude=ex), strict=True):
        np.testing.assert_array_equal(a, b)
    # a budget, not a count: 1M items give a batch that fits the same 512 MB
    big = index.ExactIndex()
    big.n = 1_000_000
    assert big.batch_size * 16 * big.n <= 512 * 2 ** 20


def test_index_that_does_not_fit_is_refused_before_the_build(monkeypatch):
    x, _ = _clustered(2_000, 64)
    ix = index.make("hnsw", memory_limit_mb=0.5)
    with pytest.raises(index.MemoryLimitError, match=r"hnsw index over 2,000 vectors of 64 dimensions needs "
                                                     r"about 1 MB, more than the 0 MB allowed.*quantizer='sq8'"):
        ix.add(x)
    assert ix.index is None and len(ix) == 0  # nothing was built
    index.make("ivf", memory_limit_mb=0.5, quantizer="sq8").add(x)  # 72 B a vector: fits
    monkeypatch.setattr(index, "available_memory_bytes", lambda: 100_000)
    with pytest.raises(index.MemoryLimitError, match="exact index over 2,000 vectors.*available"):
        index.make("exact").add(x)
    assert index.estimate_bytes("hnsw", 1_000_000, 384) / 2 ** 20 == pytest.approx(1732, rel=0.01)


@pytest.mark.parametrize("kind,params", [("exact", {}), ("hnsw", {"hnsw_m": 8}), ("ivf", {"quantizer": "sq8"}),
                                         ("ivf", {"metric": "euclidean"})])
def test_save_load_round_trip_and_add_after(tmp_path, kind, params):
    x, q = _clustered(3_000, 16)
    ix = index.make(kind, **params).add(x[:2_000])
    path = ix.save(tmp_path / "items.index")
    back = index.load(path)
    assert (back.kind, back.metric, len(back)) == (ix.kind, ix.metric, 2_000)
    for a, b in zip(ix.search(q, 10), back.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    # incremental: the rest added to the loaded index, found as well as by a fresh exact index
    back.add(x[2_000:])
    assert len(back) == 3_000
    exact_ids, _ = index.make("exact", params.get("metric", "cosine")).add(x).search(q, 10)
    assert index.recall_at_k(back.search(q, 10)[0], exact_ids) >= (1.0 if kind == "exact" else 0.9)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_refuses_what_is_not_an_index(tmp_path):
    with pytest.raises(LLMRecError, match="no saved index here"):
        index.load(tmp_path / "missing.index")
    (tmp_path / "x.index").write_bytes(b"0")
    (tmp_path / "x.index.json").write_text("{not json")
    with pytest.raises(LLMRecError, match="not an index description"):
        index.load(tmp_path / "x.index")


@pytest.mark.parametrize("kind,key", [("hnsw", "ef_search"), ("ivf", "nprobe")])
def test_tune_to_recall_picks_the_cheapest_setting_that_reaches_the_target(kind, key):
    x, q = _clustered(20_000)
    ix = index.make(kind, hnsw_m=8, ef_construction=40) if kind == "hnsw" else index.make(kind)
    ix.add(x)
    exclude = [np.arange(r, r + 3) for r in range(len(q))]
    got = index.tune_to_recall(ix, x, q, exclude=exclude, k=10, target=0.97)
    assert got["param"] == key and ix.params[key] == got["value"]
    values = list(got["tried"])
    assert values == sorted(values) and values[-1] == got["value"]
    assert got["recall_at_k"] >= 0.97 and all(r < 0.97 for r in list(got["tried"].values())[:-1])
    exact_ids, _ = index.make("exact").add(x).search(q, 10, exclude=exclude)
    again = index.recall_at_k(ix.search(q, 10, exclude=exclude)[0], exact_ids)
    assert again == pytest.approx(got["recall_at_k"], abs=1e-4)
    assert index.tune_to_recall(index.make("exact").add(x), x, q) == {}  # nothing to tune


def test_exact_search_breaks_ties_by_item_index():
    """The one tie rule (metrics.top_k): equal scores come back in item order (argpartition's order was
    arbitrary: 0, 994, 35, 42, 49 here)."""
    x = np.zeros((1000, 4), np.float32)
    x[:, 0] = 1
    x[::7, 1] = 1
    ids, scores = index.make("exact", "dot").add(x).search(np.array([[1, 1, 0, 0]], np.float32), 5)
    assert ids.tolist() == [[0, 7, 14, 21, 28]] and scores.tolist() == [[2.0] * 5]


def test_one_l2_normalisation():
    from llmrec import encoders, vectors
    assert encoders.l2_normalize is vectors.l2_normalize
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(vectors.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert vectors.l2_normalize(x, inplace=True) is x and np.allclose(x[0], [0.6, 0.8])
    unit = x[:1]
    assert vectors.as_unit(unit) is unit  # already unit length: no copy
