"""Metric functions against hand-worked examples."""

import math

import numpy as np
import pytest

from llmrec import metrics


def test_hit_rate_hand_worked():
    # ranks 0, 3, 12, miss -> HR@10 = 2/4, HR@1 = 1/4, HR@20 = 3/4
    r = np.array([0, 3, 12, -1])
    assert metrics.hit_rate(r, 10) == 0.5
    assert metrics.hit_rate(r, 1) == 0.25
    assert metrics.hit_rate(r, 20) == 0.75


def test_ndcg_hand_worked():
    # rank 0 -> 1/log2(2) = 1; rank 3 -> 1/log2(5) = 0.430677; rank 12 -> 0 at K=10
    r = np.array([0, 3, 12, -1])
    assert metrics.ndcg(r, 10) == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert metrics.ndcg(r, 10) == pytest.approx(0.357669, abs=1e-6)
    assert metrics.ndcg(r, 20) == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(14)) / 4)


def test_mrr_hand_worked():
    r = np.array([0, 3, 12, -1])
    assert metrics.mrr(r, 10) == pytest.approx((1 + 1 / 4) / 4)
    assert metrics.mrr(r, 20) == pytest.approx((1 + 1 / 4 + 1 / 13) / 4)


def test_coverage_hand_worked():
    top = np.array([[0, 1, 2], [0, 1, 3], [4, 1, 0]])
    assert metrics.coverage(top, n_items=10, k=2) == pytest.approx(3 / 10)  # {0, 1, 4}
    assert metrics.coverage(top, n_items=10, k=3) == pytest.approx(5 / 10)


def test_empty_inputs_are_zero():
    assert metrics.hit_rate(np.array([], dtype=int), 10) == 0.0
    assert metrics.ndcg(np.array([], dtype=int), 10) == 0.0
    assert metrics.coverage(np.zeros((0, 3), dtype=int), 10, 3) == 0.0


def test_target_ranks_ties_and_exclusion():
    s = np.array([[0.5, 0.9, 0.5, 0.1],
                  [1.0, 1.0, 1.0, 1.0],
                  [0.2, -np.inf, 0.3, 0.1]], dtype=np.float32)
    # row 0: target 2 (0.5) is behind item 1 (0.9) and item 0 (tie, lower index) -> rank 2
    # row 1: all tied, target 3 -> rank 3 (no credit for ties)
    # row 2: target 1 excluded -> -1 (a miss)
    assert metrics.target_ranks(s, np.array([2, 3, 1])).tolist() == [2, 3, -1]


def test_top_k_orders_best_first_with_index_tie_break():
    s = np.array([[0.1, 0.9, 0.5, 0.9, 0.0]], dtype=np.float32)
    ids, sc = metrics.top_k(s, 3)
    assert ids.tolist() == [[1, 3, 2]]
    assert sc.tolist() == [[pytest.approx(0.9), pytest.approx(0.9), pytest.approx(0.5)]]


def test_top_k_agrees_with_full_sort():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(20, 300)).astype(np.float32)
    ids, _ = metrics.top_k(s, 10)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, ref)


def test_top_k_excluding_pads_and_breaks_ties_by_index():
    s = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]], np.float32)
    ids, top = metrics.top_k_excluding(s, 4, exclude=[np.array([1]), np.array([], np.int64)],
                                       candidates=np.array([True, True, True, False, True]))
    assert ids.tolist() == [[2, 4, 0, -1], [0, 1, 2, 4]]
    assert top[0].tolist() == [3.0, 3.0, 1.0, -np.inf] and ids.dtype == np.int64 and top.dtype == np.float32
    assert s[0, 1] == 3.0  # copied unless told otherwise
    ids, top = metrics.pad_top_k(np.array([[3, 1]]), np.array([[0.5, -np.inf]], np.float32), 3)
    assert ids.tolist() == [[3, -1, -1]] and np.isneginf(top[0, 1:]).all()
