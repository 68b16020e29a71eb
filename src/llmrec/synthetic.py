"""Synthetic catalogues with text and interaction logs with learnable sequential structure, from a seed.

Items belong to topics; each topic has words that appear in its items' text. A user walks a Markov chain:
with probability ``p_next`` the next item is the successor of the current one in its topic's chain
(learnable sequential structure), otherwise a random item of the user's favourite topics (learnable
co-occurrence), otherwise a popular item (noise with a popularity skew).

With ``friends > 0`` the users also form a social graph that carries signal: each user is related to
``friends`` others, a share ``p_friend`` of them drawn among the users with the same first favourite topic
and the rest from everyone (``meta["relations"]``: user_id, related_id, one row per direction), and each
user states one of their two favourite topics in a sentence (``meta["profiles"]``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import Catalog, Dataset, IdMap, Interactions
from .errors import DataError, UnknownNameError

TOPICS = [
    ("science fiction", ["space", "alien", "robot", "future", "galaxy", "time travel"]),
    ("programming", ["python", "code", "software", "algorithm", "compiler", "database"]),
    ("cooking", ["recipe", "kitchen", "baking", "spice", "dinner", "bread"]),
    ("gardening", ["garden", "flower", "soil", "seed", "plant", "tomato"]),
    ("romance", ["love", "wedding", "heart", "letter", "summer", "kiss"]),
    ("history", ["empire", "war", "king", "ancient", "revolution", "castle"]),
    ("travel", ["journey", "island", "mountain", "city", "train", "map"]),
    ("music", ["guitar", "jazz", "song", "band", "piano", "concert"]),
    ("sports", ["football", "team", "race", "coach", "goal", "champion"]),
    ("finance", ["money", "market", "invest", "bank", "stock", "budget"]),
]
KINDS = ["book", "film", "guide", "album", "course", "magazine"]


def _chains(rng: np.random.Generator, topic_of: np.ndarray, n_topics: int):
    """Each topic's items in a random order (``members[starts[t]:starts[t] + counts[t]]``) and
    ``successor[i]``, the item after ``i`` in its topic's chain (cyclic)."""
    n_items = len(topic_of)
    members = np.lexsort((rng.random(n_items), topic_of))
    counts = np.bincount(topic_of, minlength=n_topics)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nxt = np.arange(1, n_items + 1)
    nonempty = counts > 0
    nxt[(starts + counts - 1)[nonempty]] = starts[nonempty]
    successor = np.empty(n_items, dtype=np.int64)
    successor[members] = members[nxt] if n_items else members
    return members, starts, counts, successor


def _catalog(rng: np.random.Generator, topic_of: np.ndarray) -> pd.DataFrame:
    n_items = len(topic_of)
    w0 = rng.integers(0, 6, size=n_items)  # two different words of the item's topic
    w1 = (w0 + rng.integers(1, 6, size=n_items)) % 6
    kind = rng.integers(0, len(KINDS), size=n_items)
    words = [w for _, w in TOPICS]
    titled = [[w.title() for w in ws] for ws in words]
    kinds = [k.title() for k in KINDS]
    t, a, b, k = topic_of.tolist(), w0.tolist(), w1.tolist(), kind.tolist()
    rows = range(n_items)
    return pd.DataFrame({
        "item_id": [f"i{i}" for i in rows],
        "title": [f"The {titled[t[i]][a[i]]} {kinds[k[i]]} {i}" for i in rows],
        "description": [f"A {KINDS[k[i]]} about {TOPICS[t[i]][0]}: {words[t[i]][a[i]]} and {words[t[i]][b[i]]}."
                        for i in rows],
        "tags": [f"{TOPICS[t[i]][0]}, {words[t[i]][a[i]]}, {words[t[i]][b[i]]}" for i in rows],
        "genres": [TOPICS[t[i]][0] for i in rows]})


def make(n_users: int = 500, n_items: int = 200, seed: int = 0, mean_length: float = 20,
         p_next: float = 0.6, p_topic: float = 0.3, n_topics: int | None = None,
         n_events: int | None = None, friends: int = 0, p_friend: float = 0.8) -> Dataset:
    """A synthetic data set. Deterministic in ``seed``; any size. ``n_events`` (about that many
    interactions) sets ``mean_length`` to ``n_events / n_users``.

    Cost: O(items + events) time and memory. All users take their k-th step together (a vectorised
    walk), so the work never grows with users x items.
    """
    if n_users < 1 or n_items < 1:
        raise DataError("a synthetic data set needs at least one user and one item")
    if n_events is not None:
        mean_length = n_events / n_users
    rng = np.random.default_rng(seed)
    n_topics = min(len(TOPICS), n_topics or max(2, min(len(TOPICS), n_items // 10)))
    topic_of = rng.integers(0, n_topics, size=n_items)
    members, starts, counts, successor = _chains(rng, topic_of, n_topics)
    popularity = np.minimum(rng.zipf(1.5, size=n_items).astype(np.float64), 50.0)
    cdf = np.cumsum(popularity / popularity.sum())
    items = _catalog(rng, topic_of)

    lengths = np.maximum(3, rng.poisson(mean_length, size=n_users)).astype(np.int64)
    fav_a = rng.integers(0, n_topics, size=n_users)
    fav_b = (fav_a + rng.integers(1, n_topics, size=n_users)) % n_topics if n_topics > 1 else fav_a
    size_a = counts[fav_a]
    size_b = counts[fav_b] if n_topics > 1 else np.zeros(n_users, dtype=np.int64)
    t = rng.integers(0, 30 * 86400, size=n_users)  # users start within a month, then ~a day between items

    def popular(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), n_items - 1)

    def favourite(users: np.ndarray) -> np.ndarray:
        """A uniform item of each user's favourite topics (a popular one where they have no items)."""
        sa, total = size_a[users], size_a[users] + size_b[users]
        j = (rng.random(len(users)) * total).astype(np.int64)
        in_a = j < sa
        topic = np.where(in_a, fav_a[users], fav_b[users])
        pos = np.where(in_a, j, j - sa)
        out = members[np.minimum(starts[topic] + pos, n_items - 1)]
        empty = total == 0
        if empty.any():
            out[empty] = popular(int(empty.sum()))
        return out

    # users by length, longest first: at step s the users still walking are a prefix of this order
    by_length = np.argsort(-lengths, kind="stable")
    walking = np.searchsorted(-lengths[by_length], -np.arange(lengths.max()), side="left")  # lengths > step
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    item = np.empty(int(lengths.sum()), dtype=np.int64)
    ts = np.empty(len(item), dtype=np.float64)
    cur = favourite(by_length)
    for step, n in enumerate(walking):
        users, cur = by_length[:n], cur[:n]
        at = offsets[users] + step
        item[at], ts[at] = cur, t[users]
        t[users] += rng.exponential(86400, size=n).astype(np.int64) + 1
        r = rng.random(n)
        nxt = successor[cur]
        topic = (r >= p_next) & (r < p_next + p_topic)
        nxt[topic] = favourite(users[topic])
        noise = r >= p_next + p_topic
        nxt[noise] = popular(int(noise.sum()))
        cur = nxt
    name = f"synthetic-{n_users}-{n_items}-{seed}" + (f"-{n_events}" if n_events is not None else "")
    catalog = Catalog.from_frame(items)
    users = IdMap((f"u{u}" for u in range(n_users)), kind="user")
    inter = Interactions(np.repeat(np.arange(n_users, dtype=np.int64), lengths), item, ts,
                         np.full(len(item), np.nan, dtype=np.float32))
    ds = Dataset(name=name, catalog=catalog, interactions=inter, users=users)
    ds.meta.update(topic_of=topic_of, successor=successor)
    if friends > 0:
        ds.meta.update(_social(np.random.default_rng([seed, 1]), fav_a, fav_b, n_topics, friends, p_friend))
    return ds


def _social(rng: np.random.Generator, fav_a: np.ndarray, fav_b: np.ndarray, n_topics: int, friends: int,
            p_friend: float) -> dict:
    """Mutual relations (both directions) and one-sentence profiles, from their own random stream so the
    log of a seed is the same with and without them."""
    n_users = len(fav_a)
    by_topic = [np.flatnonzero(fav_a == t) for t in range(n_topics)]
    pairs = set()
    for u in range(n_users):
        same = by_topic[fav_a[u]]
        for _ in range(friends):
            pool = same if rng.random() < p_friend and len(same) > 1 else np.arange(n_users)
            v = int(pool[rng.integers(0, len(pool))])
            if v != u:
                pairs.add((u, v))
                pairs.add((v, u))
    pairs = sorted(pairs)
    relations = pd.DataFrame({"user_id": [f"u{u}" for u, _ in pairs], "related_id": [f"u{v}" for _, v in pairs]})
    stated = np.where(rng.random(n_users) < 0.5, fav_a, fav_b)
    profiles = {f"u{u}": f"I am into {TOPICS[stated[u]][0]}." for u in range(n_users)}
    return {"relations": relations, "profiles": profiles}


NAMES = ["synthetic", "synthetic-USERS-ITEMS-SEED", "synthetic-USERS-ITEMS-SEED-EVENTS"]


def from_name(name: str) -> Dataset:
    """``synthetic``, ``synthetic-USERS-ITEMS[-SEED]`` or ``synthetic-USERS-ITEMS-SEED-EVENTS`` (about
    EVENTS interactions in all)."""
    parts = name.split("-")
    try:
        nums = [int(p) for p in parts[1:]]
    except ValueError:
        raise UnknownNameError("data set", name, NAMES) from None
    if parts[0] != "synthetic" or len(nums) > 4 or len(nums) == 1 or any(n < 0 for n in nums):
        raise UnknownNameError("data set", name, NAMES)
    if len(nums) == 4:
        return make(*nums[:3], n_events=nums[3])
    return make(*nums)
