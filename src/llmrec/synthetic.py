"""Synthetic catalogues with text and interaction logs with learnable sequential structure, from a seed.

Items belong to topics; each topic has words that appear in its items' text. A user walks a Markov chain:
with probability ``p_next`` the next item is the successor of the current one in its topic's chain
(learnable sequential structure), otherwise a random item of the user's favourite topics (learnable
co-occurrence), otherwise a popular item (noise with a popularity skew).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import Dataset, build_dataset
from .errors import UnknownNameError

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


def make(n_users: int = 500, n_items: int = 200, seed: int = 0, mean_length: int = 20,
         p_next: float = 0.6, p_topic: float = 0.3, n_topics: int | None = None) -> Dataset:
    """A synthetic data set. Deterministic in ``seed``; any size."""
    rng = np.random.default_rng(seed)
    n_topics = min(len(TOPICS), n_topics or max(2, min(len(TOPICS), n_items // 10)))
    topic_of = rng.integers(0, n_topics, size=n_items)
    # each topic's items form a chain in a random order: successor[i] is the next item in i's topic
    successor = np.empty(n_items, dtype=np.int64)
    for t in range(n_topics):
        members = rng.permutation(np.flatnonzero(topic_of == t))
        if len(members) == 0:
            continue
        successor[members] = np.roll(members, -1)
    popularity = rng.zipf(1.5, size=n_items).astype(np.float64)
    popularity = np.minimum(popularity, 50.0)
    popularity /= popularity.sum()

    titles, descriptions, tags, genres = [], [], [], []
    for i in range(n_items):
        name, words = TOPICS[topic_of[i]]
        w = rng.choice(words, size=2, replace=False)
        kind = KINDS[rng.integers(len(KINDS))]
        titles.append(f"The {w[0].title()} {kind.title()} {i}")
        descriptions.append(f"A {kind} about {name}: {w[0]} and {w[1]}.")
        tags.append(", ".join([name, *w]))
        genres.append(name)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": titles,
                          "description": descriptions, "tags": tags, "genres": genres})

    users, item_col, ts = [], [], []
    for u in range(n_users):
        length = max(3, int(rng.poisson(mean_length)))
        favs = rng.choice(n_topics, size=min(2, n_topics), replace=False)
        fav_items = np.flatnonzero(np.isin(topic_of, favs))
        cur = int(rng.choice(fav_items))
        t = int(rng.integers(0, 30 * 86400))  # users start within a month, then ~a day between items
        for _ in range(length):
            users.append(f"u{u}")
            item_col.append(f"i{cur}")
            ts.append(t)
            t += int(rng.exponential(86400)) + 1
            r = rng.random()
            if r < p_next:
                cur = int(successor[cur])
            elif r < p_next + p_topic:
                cur = int(rng.choice(fav_items))
            else:
                cur = int(rng.choice(n_items, p=popularity))
    inter = pd.DataFrame({"user_id": users, "item_id": item_col, "timestamp": ts})
    ds = build_dataset(f"synthetic-{n_users}-{n_items}-{seed}", inter, items)
    ds.meta.update(topic_of=topic_of, successor=successor)
    return ds


def from_name(name: str) -> Dataset:
    """``synthetic`` or ``synthetic-USERS-ITEMS[-SEED]``."""
    parts = name.split("-")
    try:
        nums = [int(p) for p in parts[1:]]
    except ValueError:
        raise UnknownNameError("data set", name, ["synthetic", "synthetic-USERS-ITEMS-SEED"]) from None
    if parts[0] != "synthetic" or len(nums) > 3:
        raise UnknownNameError("data set", name, ["synthetic", "synthetic-USERS-ITEMS-SEED"])
    return make(*nums)
