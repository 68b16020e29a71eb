import numpy as np
import pytest

from llmrec import split, synthetic


@pytest.fixture(scope="session")
def tiny():
    """300 users x 60 items with strong sequential structure; deterministic."""
    return synthetic.make(n_users=300, n_items=60, seed=0, mean_length=15, p_next=0.7, p_topic=0.2)


@pytest.fixture(scope="session")
def tiny_split(tiny):
    return split.leave_one_out(tiny)


@pytest.fixture(scope="session")
def checkerboard():
    """implicit's contract data: 50 users x 50 items, user u likes items of u's parity; for each user one
    liked item is withheld as the last interaction and must come back first."""
    import pandas as pd

    from llmrec.data import build_dataset
    rows = []
    for u in range(50):
        liked = [i for i in range(50) if i % 2 == u % 2]
        rng = np.random.default_rng(u)
        rng.shuffle(liked)
        for t, i in enumerate(liked):
            rows.append((f"u{u}", f"i{i}", t))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(50)],
                          "title": [f"{'even' if i % 2 == 0 else 'odd'} item {i}" for i in range(50)]})
    return build_dataset("checkerboard", df, items)
