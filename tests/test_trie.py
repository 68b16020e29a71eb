"""The prefix trie and constrained beam search: never leaves the catalogue, distinct items, exact when the
beam is wide enough (checked against scoring every item), deterministic, banned items pruned."""

import numpy as np
import pytest

from llmrec.errors import DataError
from llmrec.trie import Trie, beam_search, greedy_unconstrained

VOCAB = 12


class TableDecoder:
    """A fake language model: the next-token log-probs are a fixed random function of the prefix."""

    def __init__(self, seed=0):
        self.seed = seed
        self.prefixes = [()]
        self.calls = 0

    def logp(self, prefix):
        rng = np.random.default_rng(abs(hash((self.seed, prefix))) % (2**32))
        x = rng.normal(size=VOCAB) * 2
        return x - np.log(np.exp(x).sum())

    def start(self):
        self.prefixes = [()]
        return self.logp(())[None]

    def step(self, parents, tokens):
        self.calls += 1
        self.prefixes = [self.prefixes[p] + (int(t),) for p, t in zip(parents, tokens, strict=True)]
        return np.stack([self.logp(p) for p in self.prefixes])


def random_catalogue(n, seed=0, end=VOCAB - 1):
    rng = np.random.default_rng(seed)
    seqs = set()
    while len(seqs) < n:
        length = int(rng.integers(1, 5))
        seqs.add(tuple(int(t) for t in rng.integers(0, VOCAB - 1, size=length)) + (end,))
    return sorted(seqs)


def exact_scores(dec, seqs):
    out = []
    for s in seqs:
        lp, prefix = 0.0, ()
        for t in s:
            lp += dec.logp(prefix)[t]
            prefix = prefix + (t,)
        out.append(lp)
    return np.array(out)


def test_wide_beam_is_exact():
    seqs = random_catalogue(40)
    trie = Trie(seqs)
    dec = TableDecoder()
    exact = exact_scores(dec, seqs)
    res = beam_search(dec, trie, k=10, beam_size=len(seqs))
    want = np.lexsort((np.arange(len(seqs)), -exact))[:10]
    np.testing.assert_array_equal(res.items, want)
    np.testing.assert_allclose(res.scores, exact[want], rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_never_leaves_the_catalogue_and_items_are_distinct(seed):
    seqs = random_catalogue(30, seed=seed)
    trie = Trie(seqs)
    dec = TableDecoder(seed)
    res = beam_search(dec, trie, k=8, beam_size=3)  # a narrow beam still only finishes at leaves
    assert len(res.items) == 8
    assert len(set(res.items.tolist())) == 8
    assert set(res.items.tolist()) <= set(range(len(seqs)))
    # the reported score is the item's true sequence log-prob
    np.testing.assert_allclose(res.scores, exact_scores(dec, [seqs[i] for i in res.items]), rtol=1e-5)
    assert np.all(np.diff(res.scores) <= 0)


def test_deterministic():
    seqs = random_catalogue(30, seed=3)
    trie = Trie(seqs)
    a = beam_search(TableDecoder(1), trie, k=5, beam_size=6)
    b = beam_search(TableDecoder(1), trie, k=5, beam_size=6)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_banned_items_never_come_back_and_k_is_still_filled():
    seqs = random_catalogue(20, seed=4)
    trie = Trie(seqs)
    dec = TableDecoder(4)
    top = beam_search(dec, trie, k=5, beam_size=20).items
    res = beam_search(dec, trie, k=5, beam_size=20, banned=top[:3])
    assert not set(top[:3].tolist()) & set(res.items.tolist())
    assert len(res.items) == 5
    everything_banned = beam_search(dec, trie, k=5, banned=range(20))
    assert len(everything_banned.items) == 0


def test_fewer_items_than_k():
    trie = Trie([(1, 11), (2, 11)])
    res = beam_search(TableDecoder(), trie, k=10)
    assert sorted(res.items.tolist()) == [0, 1]


def test_renormalized_scores_are_log_probs_over_allowed_tokens():
    seqs = [(1, 11), (2, 11), (3, 11)]
    res = beam_search(TableDecoder(), Trie(seqs), k=3, renormalize=True)
    # every item has one branching step then a forced end token: probabilities sum to one
    assert np.isclose(np.exp(res.scores).sum(), 1.0, atol=1e-5)


def test_trie_rejects_collisions_and_prefixes():
    """The project's DataError (the command line's exit 2 and one line), not a ValueError traceback."""
    with pytest.raises(DataError, match="same token sequence"):
        Trie([(1, 2), (1, 2)])
    with pytest.raises(DataError, match="prefix"):
        Trie([(1, 2, 3), (1, 2)])
    with pytest.raises(DataError, match="prefix-free"):
        Trie([(1, 2), (1, 2, 3)])
    with pytest.raises(DataError, match="empty"):
        Trie([()])


def test_lookup_and_unconstrained_greedy():
    seqs = random_catalogue(10, seed=5)
    trie = Trie(seqs)
    assert all(trie.lookup(s) == i for i, s in enumerate(seqs))
    assert trie.lookup((0, 0, 0, 0, 0, 0)) == -1
    out = greedy_unconstrained(TableDecoder(5), max_len=6, stop={VOCAB - 1})
    assert 1 <= len(out) <= 6
