"""A prefix trie over the items' token sequences, and beam search constrained to it.

Every item is a sequence of token ids (a tokenised title ending in an end token, or a semantic id); the
sequences must be prefix-free (no item's sequence starts another's), so each leaf is exactly one item and
a finished beam is always a real catalogue item. ``beam_search`` returns the top-k *distinct* items with
their sequence log-probabilities; it is deterministic (no sampling; ties broken by token id, then item
index).

The model side is a small protocol, so any decoder plugs in (a Hugging Face LM with a KV cache, the
semantic-id transformer, a lookup table in the tests):

    start()                      -> log-probs float [1, vocab] of the first token (and keeps its state)
    step(parents, tokens)        -> log-probs float [n, vocab] after appending ``tokens[j]`` to the
                                    beam ``parents[j]`` of the previous call (int64 arrays [n])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import DataError


class Decoder(Protocol):
    def start(self) -> np.ndarray: ...

    def step(self, parents: np.ndarray, tokens: np.ndarray) -> np.ndarray: ...


class Trie:
    """Token sequences -> items. Node 0 is the root; ``children[node]`` maps token -> child node."""

    def __init__(self, sequences: Iterable[Sequence[int]], items: Iterable[int] | None = None):
        seqs = [tuple(int(t) for t in s) for s in sequences]
        items = list(range(len(seqs))) if items is None else [int(i) for i in items]
        if len(items) != len(seqs):
            raise DataError("one item per sequence")
        self.children: list[dict[int, int]] = [{}]
        self.item: list[int] = [-1]  # item at a leaf, -1 inside
        self.parent: list[int] = [-1]
        self.leaf_of: dict[int, int] = {}
        for s, it in zip(seqs, items, strict=True):
            if not s:
                raise DataError(f"item {it} has an empty token sequence")
            node = 0
            for t in s:
                if self.item[node] >= 0:
                    raise DataError(f"item {it}'s sequence extends item {self.item[node]}'s: "
                                     "sequences must be prefix-free (end each with an end token)")
                nxt = self.children[node].get(t)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][t] = nxt
                    self.children.append({})
                    self.item.append(-1)
                    self.parent.append(node)
                node = nxt
            if self.children[node]:
                raise DataError(f"item {it}'s sequence is a prefix of another item's")
            if self.item[node] >= 0:
                raise DataError(f"items {self.item[node]} and {it} have the same token sequence "
                                 "(disambiguate colliding titles first)")
            self.item[node] = it
            self.leaf_of[it] = node
        self.n_leaves = np.zeros(len(self.children), dtype=np.int64)
        for leaf in self.leaf_of.values():
            n = leaf
            while n >= 0:
                self.n_leaves[n] += 1
                n = self.parent[n]
        self.max_depth = max((len(s) for s in seqs), default=0)

    def __len__(self) -> int:
        return len(self.leaf_of)

    def lookup(self, tokens: Sequence[int]) -> int:
        """The item whose full sequence is ``tokens``, else -1 (an invalid item)."""
        node = 0
        for t in tokens:
            node = self.children[node].get(int(t), -1)
            if node < 0:
                return -1
        return self.item[node]

    def banned_counts(self, banned: Iterable[int]) -> dict[int, int]:
        """node -> how many of its leaves are banned; a node is dead when all its leaves are."""
        out: dict[int, int] = {}
        for it in banned:
            n = self.leaf_of.get(int(it))
            while n is not None and n >= 0:
                out[n] = out.get(n, 0) + 1
                n = self.parent[n]
        return out


@dataclass
class Beam:
    """The beam search result: item indices int64 [m] and their sequence log-probs float32 [m], best
    first, m <= k; plus the number of decoder steps taken."""

    items: np.ndarray
    scores: np.ndarray
    steps: int


def beam_search(decoder: Decoder, trie: Trie, k: int, beam_size: int | None = None,
                banned: Iterable[int] = (), renormalize: bool = False) -> Beam:
    """Top-``k`` distinct items of ``trie`` by sequence log-probability under ``decoder``.

    beam_size: live hypotheses kept per step (default k; larger is closer to exact). banned: items never
    returned (e.g. the user's history); their subtrees are pruned, so k results come back whenever the
    trie has k allowed items. renormalize: score with log-probs renormalised over the allowed tokens at
    each step instead of the model's own. Search stops early once no live beam can beat the k-th
    finished item (log-probs only fall), so with beam_size >= number of items the result is exact.
    """
    beam_size = max(int(beam_size or k), k)
    dead = trie.banned_counts(banned)
    done_items: list[int] = []
    done_scores: list[float] = []
    nodes = np.array([0])
    scores = np.zeros(1)
    logp = np.asarray(decoder.start(), dtype=np.float64)
    steps = 0
    while len(nodes):
        cand_parent, cand_tok, cand_node, cand_score = [], [], [], []
        for b, node in enumerate(nodes):
            kids = [(t, c) for t, c in sorted(trie.children[node].items())
                    if trie.n_leaves[c] > dead.get(c, 0)]
            if not kids:
                continue
            toks = np.fromiter((t for t, _ in kids), dtype=np.int64, count=len(kids))
            lp = logp[b, toks]
            if renormalize:
                m = lp.max()
                lp = lp - (m + np.log(np.exp(lp - m).sum()))
            cand_parent.append(np.full(len(kids), b))
            cand_tok.append(toks)
            cand_node.append(np.fromiter((c for _, c in kids), dtype=np.int64, count=len(kids)))
            cand_score.append(scores[b] + lp)
        if not cand_parent:
            break
        parent = np.concatenate(cand_parent)
        tok = np.concatenate(cand_tok)
        node = np.concatenate(cand_node)
        score = np.concatenate(cand_score)
        order = np.lexsort((tok, parent, -score))[:beam_size]  # best score; ties: earlier beam, token
        parent, tok, node, score = parent[order], tok[order], node[order], score[order]
        leaf = np.array([trie.item[n] >= 0 for n in node], dtype=bool)
        for n, s in zip(node[leaf], score[leaf], strict=True):
            done_items.append(trie.item[n])
            done_scores.append(float(s))
        live = ~leaf
        if len(done_scores) >= k:
            kth = np.sort(done_scores)[::-1][k - 1]
            live &= score > kth
        if not live.any():
            break
        nodes, scores = node[live], score[live]
        logp = np.asarray(decoder.step(parent[live], tok[live]), dtype=np.float64)
        steps += 1
    items = np.asarray(done_items, dtype=np.int64)
    sc = np.asarray(done_scores, dtype=np.float64)
    order = np.lexsort((items, -sc))[:k]
    return Beam(items[order], sc[order].astype(np.float32), steps)


def greedy_unconstrained(decoder: Decoder, max_len: int, stop: set[int] | None = None) -> list[int]:
    """Greedy decoding with no trie (to measure how often a free model leaves the catalogue): the
    argmax token each step until a ``stop`` token (included) or ``max_len`` tokens."""
    out: list[int] = []
    logp = np.asarray(decoder.start())
    for _ in range(max_len):
        t = int(np.argmax(logp[0]))
        out.append(t)
        if stop and t in stop:
            break
        if len(out) == max_len:
            break
        logp = np.asarray(decoder.step(np.zeros(1, dtype=np.int64), np.array([t])))
    return out


def generation_report(latency_s: list[float], invalid: int, returned: int, invalid_unconstrained: float,
                      sample: int) -> dict:
    """The figures every generative model's benchmark result carries: invalid-item rates with and without
    the trie, and per-user generation latency."""
    lat = np.array(latency_s) * 1000 if latency_s else np.zeros(1)
    return {"invalid_rate": round(invalid / max(returned, 1), 4),
            "invalid_rate_unconstrained": round(invalid_unconstrained, 4),
            "invalid_rate_note": "constrained: share of beam items not in the catalogue over every evaluated "
                                 "user; unconstrained: greedy decoding without the trie for the first "
                                 f"{sample} training histories",
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2)}
