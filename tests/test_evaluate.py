"""The evaluator's blocks of users: any block size gives exactly the one-shot figures."""

from dataclasses import dataclass

import numpy as np
import pytest

from llmrec import evaluate, metrics, models
from llmrec.errors import ConfigError
from llmrec.models.base import Recommender


@pytest.mark.parametrize("name", ["popular", "itemknn"])  # popular: ties everywhere; itemknn: sparse scores
@pytest.mark.parametrize("stage", ["test", "valid"])
def test_block_wise_equals_one_shot(name, stage, tiny, tiny_split):
    m = models.get(name).fit(tiny, tiny_split, progress=False)
    one = evaluate.evaluate(m, tiny_split, tiny.n_users, tiny.n_items, ks=(1, 5, 10), stage=stage,
                            memory_mb=1024, progress=False)
    assert f"blocks of {one.n_users:,} users" in one.protocol  # one block holds everyone
    for mb in (1e-6, 4 * tiny.n_items * 7 / 2**20):  # one user per block; seven users per block
        many = evaluate.evaluate(m, tiny_split, tiny.n_users, tiny.n_items, ks=(1, 5, 10), stage=stage,
                                 memory_mb=mb, progress=False)
        assert many.metrics == one.metrics
        assert many.n_users == one.n_users and many.n_candidates == one.n_candidates
        assert "do not change the figures" in many.protocol


def test_block_users_follows_the_budget():
    assert evaluate.block_users(1000, memory_mb=1.0) == 2**20 // 4000
    assert evaluate.block_users(10**7, memory_mb=1.0) == 1  # never zero
    assert evaluate.block_users(341_765) == 12  # Book-Crossing at the default 16 MB
    assert evaluate.block_users(341_765, memory_mb=256) == 196


@pytest.mark.parametrize("n", [40, 3001])  # 3001 columns: the strided bound is used for k <= 11
def test_top_k_and_ranks_match_a_stable_sort_with_ties_and_exclusions(n):
    rng = np.random.default_rng(1)
    s = rng.integers(0, 4, size=(50, n)).astype(np.float32)  # heavy ties: flat rows
    s[10:30] = rng.normal(size=(20, n))  # distinct values
    s[30:40] = 0.0
    s[30:40, rng.integers(0, n, 25)] = rng.random(25)  # sparse rows: few positives, a flat rest
    s[40:45] = 0.0
    s[40:45, rng.integers(0, n, 3)] = rng.random(3)  # fewer positives than k: the rest ties at 0
    s[rng.random(s.shape) < 0.3] = -np.inf
    s[0] = -np.inf  # a row with nothing left
    order = np.argsort(-s, axis=1, kind="stable")
    for k in (1, 3, 10, 40, 60):
        ids, sc = metrics.top_k(s, k)
        np.testing.assert_array_equal(ids, order[:, :min(k, n)])
        np.testing.assert_array_equal(sc, np.take_along_axis(s, order[:, :min(k, n)], axis=1))
    targets = rng.integers(0, n, size=50)
    want = np.argmax(order == targets[:, None], axis=1)
    want[np.isneginf(s[np.arange(50), targets])] = -1
    np.testing.assert_array_equal(metrics.target_ranks(s, targets), want)


@dataclass(frozen=True)
class _NoConfig:
    pass


class _HeldScores(Recommender):
    """Returns a view of a table it keeps (scores it holds): the evaluator must not write into it."""
    name = "held-scores"
    Config = _NoConfig

    def _fit(self, data, train, split, progress):
        self.table = np.random.default_rng(0).random((data.n_users, data.n_items)).astype(np.float32)
        self.table[:, ::7] = 0.0  # ties

    def score_histories(self, histories):
        return self.table[:len(histories)]


class _FreshScores(_HeldScores):
    fresh_scores = True

    def score_histories(self, histories):
        return self.table[:len(histories)].copy()


@pytest.mark.parametrize("mb", [1e-6, 1024])
def test_scores_the_model_holds_are_copied_fresh_ones_overwritten(mb, tiny, tiny_split):
    held = _HeldScores().fit(tiny, tiny_split, progress=False)
    before = held.table.copy()
    a = evaluate.evaluate(held, tiny_split, tiny.n_users, tiny.n_items, memory_mb=mb, progress=False)
    np.testing.assert_array_equal(held.table, before)  # the exclusions went into a copy
    fresh = _FreshScores().fit(tiny, tiny_split, progress=False)
    b = evaluate.evaluate(fresh, tiny_split, tiny.n_users, tiny.n_items, memory_mb=mb, progress=False)
    assert a.metrics == b.metrics
    assert models.get("itemknn").fresh_scores and not models.get("popular").fresh_scores


def test_k_larger_than_the_catalogue_is_refused(tiny, tiny_split):
    m = models.get("popular").fit(tiny, tiny_split, progress=False)
    with pytest.raises(ConfigError, match=f"k={tiny.n_items + 1} is larger than the catalogue"):
        evaluate.evaluate(m, tiny_split, tiny.n_users, tiny.n_items, ks=(10, tiny.n_items + 1),
                          progress=False)
    full = evaluate.evaluate(m, tiny_split, tiny.n_users, tiny.n_items, ks=(10, tiny.n_items),
                             progress=False)  # k = the whole catalogue still works
    assert full.metrics[f"HR@{tiny.n_items}"] >= full.metrics["HR@10"]


def test_unknown_stage_is_the_projects_error(tiny, tiny_split):
    from llmrec.errors import LLMRecError
    m = models.get("popular").fit(tiny, tiny_split, progress=False)
    with pytest.raises(LLMRecError, match="stage must be 'test' or 'valid'"):
        evaluate.evaluate(m, tiny_split, tiny.n_users, tiny.n_items, stage="train")
