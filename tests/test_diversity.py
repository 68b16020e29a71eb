"""Beyond accuracy: the metrics against hand-worked lists, MMR (diversity 0 is the plain ranking, more
diversity spreads a list), the same re-ranking in recommend, the evaluator, the command line and the HTTP
service, and a bad diversity refused everywhere."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from llmrec import cli, evaluate, metrics, models, rerank
from llmrec.errors import ConfigError

S2 = 1 / np.sqrt(2)


def test_intra_list_diversity_by_hand():
    v = np.array([[1, 0], [0, 1], [2, 2]], np.float32)  # not unit: the metric takes the cosine
    # list 1: pairs (0,1) 1 - 0, (0,2) and (1,2) 1 - 0.7071 -> mean 0.5286; list 2 (padded): 1 - 0 = 1
    topk = np.array([[0, 1, 2], [0, 1, -1]])
    assert metrics.intra_list_diversity(topk, v, 3) == pytest.approx(((1 + 2 * (1 - S2)) / 3 + 1) / 2, abs=1e-6)
    assert metrics.intra_list_diversity(topk, v, 2) == pytest.approx(1.0)
    assert metrics.intra_list_diversity(np.array([[2, -1]]), v, 2) == 0.0  # one item: no pair


def test_novelty_popularity_and_head_by_hand():
    users_per_item = np.array([4, 2, 1, 0])  # of 4 users: p = 1, 1/2, 1/4, and 1/4 for no one
    topk = np.array([[0, 1], [2, 3]])
    assert metrics.novelty(topk, users_per_item, 4, 2) == pytest.approx((0 + 1 + 2 + 2) / 4)
    assert metrics.novelty(topk, users_per_item, 4, 1) == pytest.approx((0 + 2) / 2)
    pop = np.array([10, 5, 1, 0, 5])
    assert metrics.average_popularity(topk, pop, 2) == pytest.approx((7.5 + 0.5) / 2)
    assert metrics.short_head(pop).tolist() == [True, False, False, False, False]  # ceil(0.2 x 5) = 1
    head = metrics.short_head(pop, share=0.4)  # 2 items: 0, then 1 before 4 (a tie: the lower index)
    assert head.tolist() == [True, True, False, False, False]
    assert metrics.head_share(np.array([[0, 1], [2, 4]]), head, 2) == pytest.approx(0.5)
    cand = np.array([False, True, True, True, True])
    assert np.flatnonzero(metrics.short_head(pop, cand)).tolist() == [1]


def _cluster():
    """Items 0-2 nearly the same vector and the best scored; items 3, 4 each point elsewhere."""
    v = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.99, 0, 0.14], [0, 1, 0], [0, 0, 1]], np.float64)
    return np.array([1.0, 0.99, 0.98, 0.5, 0.4]), v / np.linalg.norm(v, axis=1, keepdims=True)


def test_mmr_without_diversity_is_the_plain_ranking():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = np.sort(rng.random(30))[::-1]
        v = rng.normal(size=(30, 8))
        assert rerank.mmr(scores, v / np.linalg.norm(v, axis=1, keepdims=True), 10, 0.0).tolist() == list(range(10))
    scores, v = _cluster()
    assert rerank.mmr(np.array([1.0, 1.0, 0.5]), v[:3], 3, 0.0).tolist() == [0, 1, 2]  # ties: earlier first


def test_mmr_spreads_the_list_and_skips_non_candidates():
    scores, v = _cluster()
    plain, mixed = rerank.mmr(scores, v, 3, 0.0), rerank.mmr(scores, v, 3, 0.5)
    assert plain.tolist() == [0, 1, 2] and mixed.tolist() == [0, 3, 4]
    assert metrics.intra_list_diversity(mixed[None], v, 3) > metrics.intra_list_diversity(plain[None], v, 3)
    scores[3] = -np.inf
    assert 3 not in rerank.mmr(scores, v, 4, 1.0).tolist()
    assert len(rerank.mmr(scores, v, 10, 0.3)) == 4


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_diversity_is_refused(bad):
    with pytest.raises(ConfigError, match="diversity"):
        rerank.check_diversity(bad)


class VectorKNN(models.get_class("itemknn")):
    """itemknn with item vectors of its own (random, seeded): no text encoder in the fast tests."""

    def diversity_vectors(self):
        return np.random.default_rng(1).normal(size=(len(self.catalog), 16)).astype(np.float32), "random vectors"


@pytest.fixture(scope="module")
def knn(tiny, tiny_split):
    return VectorKNN(threads=1).fit(tiny, tiny_split, progress=False)


def test_recommend_with_diversity(knn, tiny):
    users = list(tiny.users.ids()[:20])
    plain = knn.recommend(users=users, k=10, explain=True)
    same = knn.recommend(users=users, k=10, explain=True, diversity=0.0)
    assert (plain.item_ids == same.item_ids).all()
    mixed = knn.recommend(users=users, k=10, explain=True, diversity=0.7)
    v, _ = knn.diversity_vectors()
    ild = [metrics.intra_list_diversity(knn.catalog.ids.indices(list(r.item_ids[b]))[None], v, 10)
           for r in (plain, mixed) for b in range(len(users))]
    assert np.mean(ild[len(users):]) > np.mean(ild[:len(users)])
    assert mixed.item_ids.shape == (20, 10) and len(mixed.explanations[0]) == 10
    with pytest.raises(ConfigError, match="diversity"):
        knn.recommend(users=users, k=10, diversity=2.0)


def test_evaluator_beyond_accuracy_and_diversity(knn, tiny, tiny_split):
    args = (knn, tiny_split, tiny.n_users, tiny.n_items)
    plain = evaluate.evaluate(*args, ks=(5, 10), progress=False)
    zero = evaluate.evaluate(*args, ks=(5, 10), progress=False, beyond=True)
    assert {k: zero.metrics[k] for k in plain.metrics} == plain.metrics  # beyond adds, changes nothing
    assert zero.extra["item_vectors"] == "random vectors" and "ILD = mean pairwise" in zero.protocol
    for k in (5, 10):
        assert 0 < zero.metrics[f"ILD@{k}"] <= 2 and zero.metrics[f"Novelty@{k}"] > 0
        assert 0 <= zero.metrics[f"Head@{k}"] <= 1 and zero.metrics[f"ARP@{k}"] > 0
    mixed = evaluate.evaluate(*args, ks=(5, 10), progress=False, beyond=True, diversity=0.7)
    assert mixed.metrics["ILD@10"] > zero.metrics["ILD@10"]
    assert "MMR re-ranking diversity=0.7" in mixed.protocol
    assert mixed.metrics["NDCG@10"] != zero.metrics["NDCG@10"]


def test_cli_diversity_and_bad_values(capsys):
    assert cli.main(["recommend", "--dataset", "synthetic", "--user", "u1", "--diversity", "1.5"]) == 2
    assert "--diversity" in capsys.readouterr().err
    assert cli.main(["evaluate", "--dataset", "synthetic", "--diversity", "-1"]) == 2
    assert "--diversity" in capsys.readouterr().err


def test_http_diversity(tiny, tmp_path):
    from llmrec import service
    from llmrec.server import create_app
    m = VectorKNN(threads=1).fit(tiny, progress=False)
    engine = service.open_engine(m, tmp_path / "state", source="tiny")
    try:
        c = TestClient(create_app(engine, insecure=True))
        hist = list(tiny.catalog.ids.ids(np.arange(5)))
        plain = c.post("/recommend", json={"history": hist, "k": 10}).json()["items"]
        zero = c.post("/recommend", json={"history": hist, "k": 10, "diversity": 0}).json()["items"]
        mixed = c.post("/recommend", json={"history": hist, "k": 10, "diversity": 0.7}).json()["items"]
        assert plain == zero and len(mixed) == 10 and [i["item_id"] for i in mixed] != [i["item_id"] for i in plain]
        for bad in (1.5, -0.2, "high", True):
            r = c.post("/recommend", json={"history": hist, "diversity": bad})
            assert r.status_code == 422 and "diversity" in r.text, (bad, r.text)
        with pytest.raises(Exception, match="diversity"):
            engine.recommend(history=hist, diversity=3)
        queries = [dict(history=hist, k=k, diversity=1.0) for k in (3, 40)]
        assert engine.recommend_many(queries) == [engine.recommend(**q) for q in queries]  # batched = alone
    finally:
        engine.store.close()


def test_service_text_queries_take_diversity(tmp_path):
    from servicekit import TextKNN, dataset

    from llmrec import service

    class VectorTextKNN(TextKNN):
        def diversity_vectors(self):
            return np.random.default_rng(2).normal(size=(len(self.catalog), 8)).astype(np.float32), "random"
    ds = dataset()
    engine = service.open_engine(VectorTextKNN().fit(ds, progress=False), tmp_path / "state", source="topics")
    try:
        plain = engine.recommend(text="space robots", k=4)["items"]
        mixed = engine.recommend(text="space robots", k=4, diversity=1.0)["items"]
        assert len(mixed) == len(plain) == 4 and mixed[0] == plain[0]  # the first pick is the most relevant
        assert [i["item_id"] for i in mixed] != [i["item_id"] for i in plain]
    finally:
        engine.store.close()


@pytest.mark.slow
def test_text_vectors_for_a_model_without_its_own(tiny, tiny_split):
    """itemknn has no item vectors: diversity is measured in the catalogue's text vectors."""
    m = models.get("itemknn", threads=1).fit(tiny, tiny_split, progress=False)
    v, what = m.diversity_vectors()
    assert v.shape[0] == tiny.n_items and "vectors of the item text" in what
    r = evaluate.evaluate(m, tiny_split, tiny.n_users, tiny.n_items, ks=(10,), progress=False, diversity=0.5,
                          beyond=True)
    assert r.extra["item_vectors"] == what and r.metrics["ILD@10"] > 0
