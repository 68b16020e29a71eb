import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
def beats_popularity(tiny, tiny_split):
    """check(model) -> the model's metrics on ``tiny``'s test split, after asserting that its NDCG@10 beats
    popularity's by a clear margin (more than twice it, plus 0.05): the learning floor of trained models."""
    from llmrec import evaluate, models
    pop = models.get("popular").fit(tiny, tiny_split, progress=False)
    base = evaluate.evaluate(pop, tiny_split, tiny.n_users, tiny.n_items, ks=(10,), progress=False).metrics

    def check(model) -> dict:
        ours = evaluate.evaluate(model, tiny_split, tiny.n_users, tiny.n_items, ks=(10,), progress=False).metrics
        assert ours["NDCG@10"] > 2 * base["NDCG@10"] + 0.05, (ours, base)
        return ours
    return check


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


# the service tests' topic data set and an itemknn engine on it (test_service.py has its own)
@pytest.fixture(scope="module")
def ds():
    from servicekit import dataset
    return dataset()


@pytest.fixture
def engine(ds, tmp_path):
    """An itemknn engine on the topic data set, with its own store."""
    from llmrec import models, service
    e = service.open_engine(models.get("itemknn").fit(ds, progress=False), tmp_path / "state", source="t")
    yield e
    e.store.close()


# a throwaway Postgres cluster for the whole run (tests/pgkit.py): started on first use, stopped at the end
@pytest.fixture(scope="session")
def pg_cluster():
    from pgkit import Cluster
    cluster = Cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster):
    """A fresh database on the run's cluster."""
    return pg_cluster.new_database()


def _register_test_encoder():
    """Runs in every Ray worker: the jobs and checkpoints of the Ray tests name the test encoder."""
    from test_encoders import BagOfWords

    from llmrec import encoders
    encoders.register("test-bow", BagOfWords, "bag-of-words stub for tests")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs whose workers import this checkout and the tests' stubs (one per test module)."""
    ray = pytest.importorskip("ray")
    import llmrec
    src = Path(llmrec.__file__).resolve().parents[1]  # the llmrec these tests import
    path = os.pathsep.join([str(src), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
                          "worker_process_setup_hook": _register_test_encoder})
    yield ray
    ray.shutdown()


def kill_mid_run(code: str, out: Path, parts: int = 20) -> list[Path]:
    """Run ``code`` (a batch job writing part files into ``out``) in its own Python, SIGKILL it once
    ``parts`` part files are there, and return the part files it left (sorted). The child imports the
    llmrec these tests import and the tests' stubs."""
    import llmrec
    src = Path(llmrec.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(Path(__file__).parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 60
    while not (out.exists() and len(list(out.glob("part-*.parquet"))) >= parts) and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    return sorted(out.glob("part-*.parquet"))
