"""Maximal marginal relevance (Carbonell & Goldstein, 1998): a top-k list re-ranked for diversity.

Greedy: the next item is the one of the candidates left maximising
``(1 - diversity) * relevance - diversity * max cosine to the items already chosen``, relevance being the
model's scores min-max scaled to [0, 1] over the candidates (so the two terms share a scale whatever the
model's scores are). ``diversity=0`` returns the candidates in their given order (ties to the earlier one);
1 ignores relevance after the first item. Candidates are the model's top ``pool(k)`` items.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def check_diversity(diversity, field: str = "diversity") -> float:
    """A diversity weight: a number from 0 to 1 (ConfigError naming ``field`` otherwise)."""
    if isinstance(diversity, bool) or not isinstance(diversity, (int, float)) or not 0.0 <= diversity <= 1.0:
        raise ConfigError(f"{field}: must be a number from 0 (off) to 1, got {diversity!r}")
    return float(diversity)


def pool(k: int, n_items: int) -> int:
    """How many of the model's best items MMR chooses ``k`` from: 5 k, at least 50, at most the catalogue."""
    return max(k, min(n_items, max(5 * k, 50)))


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Positions (int64, at most ``k``) into the candidates, in MMR order. scores float [c] (-inf =
    not a candidate: never chosen); vectors float [c, d], unit rows (cosine = dot)."""
    scores = np.asarray(scores, np.float64)
    ok = np.isfinite(scores)
    k = min(k, int(ok.sum()))
    if k == 0:
        return np.zeros(0, np.int64)
    lo, hi = scores[ok].min(), scores[ok].max()
    rel = np.where(ok, (np.where(ok, scores, lo) - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    v = np.asarray(vectors, np.float64)
    closest = np.full(len(scores), -np.inf)  # max cosine to the chosen items (none yet)
    chosen = []
    for _ in range(k):
        gain = (1.0 - diversity) * rel - diversity * np.where(np.isfinite(closest), closest, 0.0)
        gain[~ok] = -np.inf
        gain[chosen] = -np.inf
        j = int(np.argmax(gain))
        chosen.append(j)
        np.maximum(closest, v @ v[j], out=closest)
    return np.asarray(chosen, np.int64)
