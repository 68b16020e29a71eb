"""Data-parallel training (workers=2: two processes, DDP over gloo) against one process on the same data.

With batch_size global, the same seed and dropout=0, the two ranks' weighted gradients average to the
whole batch's gradient, so the runs differ only in the order of float sums (about 1e-7 relative per step).
Measured after 6 epochs: losses equal to 5 decimals, scores within 1.5e-6 (transformer) and 1.4e-5 (hstu)
of scores up to 4.5. Tolerances: losses 1e-4 relative, scores 1e-4 absolute, validation NDCG@10 1e-3
(only a near-tie at the top of a user's list could flip). Checked against broken splits: every rank
training on rank 0's rows moves the losses by 6% relative, a shard's loss left unweighted by its share of
the batch's positions by 5e-4.
"""

import sys

import numpy as np
import pytest

from llmrec import models
from llmrec.errors import ConfigError, LLMRecError

CFG = dict(embedding_size=32, max_history=20, epochs=6, batch_size=64, learning_rate=5e-3, dropout=0.0,
           patience=2, threads=1)
HIST = [np.arange(5) + i for i in range(20)]


def _same_training(a, b):
    ra, rb = a.result, b.result
    assert [h["epoch"] for h in ra.history] == [h["epoch"] for h in rb.history]
    np.testing.assert_allclose([h["loss"] for h in rb.history], [h["loss"] for h in ra.history], rtol=1e-4)
    np.testing.assert_allclose([h["valid_ndcg10"] for h in rb.history], [h["valid_ndcg10"] for h in ra.history],
                               atol=1e-3)
    assert (ra.best_epoch, ra.stopped_early) == (rb.best_epoch, rb.stopped_early)
    np.testing.assert_allclose(b.score_histories(HIST), a.score_histories(HIST), atol=1e-4)


@pytest.mark.parametrize("block", ["transformer", "hstu"])
def test_two_workers_train_as_one_process(tiny, tiny_split, block):
    cfg = {**CFG, "block": block}
    one = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=False)
    two = models.get("sasrec", {**cfg, "workers": 2}).fit(tiny, tiny_split, progress=False)
    _same_training(one, two)
    assert two.result.best_score > 0.3  # it learned (popularity is about 0.1 here)


def test_early_stopping_keeps_the_best_weights_with_two_workers(tiny, tiny_split):
    cfg = {**CFG, "epochs": 20, "learning_rate": 2e-2, "patience": 1}  # overshoots after epoch 3
    one = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=False)
    two = models.get("sasrec", {**cfg, "workers": 2}).fit(tiny, tiny_split, progress=False)
    assert two.result.stopped_early and two.result.best_epoch < len(two.result.history) < 20
    _same_training(one, two)  # same stop, and the best epoch's weights (the scores compared) on both


def test_two_workers_train_textseq_as_one_process(tiny, tiny_split):
    cfg = {**CFG, "epochs": 3, "encoder": "hash"}  # with the id embedding: text buffer and id table
    one = models.get("textseq", cfg).fit(tiny, tiny_split, progress=False)
    two = models.get("textseq", {**cfg, "workers": 2}).fit(tiny, tiny_split, progress=False)
    _same_training(one, two)


def test_time_budget_and_resume_with_two_workers(tiny, tiny_split, tmp_path):
    cfg = {**CFG, "epochs": 3, "batch_size": 16, "max_minutes": 1e-6, "workers": 2}
    cut = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "ck")
    first = cut.result.history
    assert cut.result.out_of_time and len(first) == 1 and first[0]["partial"] and first[0]["batches"] == 1
    assert "valid_ndcg10" in first[0]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "train_state.pt", "training_curve.png", "training_history.json"]  # written once, by rank 0
    assert np.isfinite(models.load_model(cut.save(tmp_path / "saved")).score_histories(HIST)).all()
    again = models.get("sasrec", {**cfg, "max_minutes": 0.0})
    again.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "ck")
    assert not again.result.out_of_time and [h["epoch"] for h in again.result.history] == [1, 2, 3]
    plain = models.get("sasrec", {**cfg, "max_minutes": 0.0, "workers": 1}).fit(tiny, tiny_split, progress=False)
    _same_training(plain, again)
    # workers may change between a run and its resume: one process finishes what two started
    done = models.get("sasrec", {**cfg, "max_minutes": 0.0, "workers": 1, "epochs": 4})
    done.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "ck")
    assert done.result.resumed_from == 3 and [h["epoch"] for h in done.result.history] == [1, 2, 3, 4]


def test_errors_in_workers_reach_the_caller(tiny, tiny_split, tmp_path):
    models.get("sasrec", {**CFG, "epochs": 1}).fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path)
    other = models.get("sasrec", {**CFG, "epochs": 1, "learning_rate": 1e-2, "workers": 2})
    with pytest.raises(LLMRecError, match="training state from another config.*learning_rate"):
        other.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="workers=2: data-parallel training runs on CPU.*device=cpu"):
        models.get("sasrec", {**CFG, "workers": 2, "device": "cuda"}).fit(tiny, tiny_split, progress=False)
    with pytest.raises(ConfigError, match="workers"):
        models.get("sasrec", {**CFG, "workers": 0})


@pytest.mark.slow
def test_ray_train_engine_trains_as_one_process_and_passes_errors_on(tiny, tiny_split, tmp_path):
    pytest.importorskip("ray.train")
    cfg = {**CFG, "epochs": 3}
    one = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path)
    two = models.get("sasrec", {**cfg, "workers": 2, "engine": "ray", "epochs": 4})
    two.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path)  # resumes what one process did
    assert two.result.resumed_from == 3 and [h["epoch"] for h in two.result.history] == [1, 2, 3, 4]
    plain = models.get("sasrec", {**cfg, "epochs": 4}).fit(tiny, tiny_split, progress=False)
    _same_training(plain, two)
    other = models.get("sasrec", {**cfg, "learning_rate": 1e-2, "workers": 2, "engine": "ray"})
    with pytest.raises(LLMRecError, match="training state from another config.*learning_rate"):
        other.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path)
    assert [h["loss"] for h in one.result.history] == [h["loss"] for h in plain.result.history[:3]]


def test_ray_engine_without_ray_names_the_extra(tiny, tiny_split, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(LLMRecError, match=r"needs the 'ray' extra: pip install 'llmrec\[ray\]'"):
        models.get("sasrec", {**CFG, "workers": 2, "engine": "ray"}).fit(tiny, tiny_split, progress=False)


def test_ray_engine_joins_the_cluster_that_RAY_ADDRESS_names(tiny, tiny_split, monkeypatch):
    """Ray's own RAY_ADDRESS (what `ray job submit` sets) is where engine=ray trains: here nothing listens
    there, so the fit is refused within seconds instead of starting a Ray of its own."""
    pytest.importorskip("ray.train")
    import time
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(LLMRecError, match="cannot reach a Ray cluster at 127.0.0.1:9"):
        models.get("sasrec", {**CFG, "workers": 2, "engine": "ray"}).fit(tiny, tiny_split, progress=False)
    assert time.perf_counter() - t0 < 10


FIT_ON_CLUSTER = """
import json, sys
import numpy as np
from llmrec import models, split, synthetic
cfg, hist, out = json.loads(sys.argv[1]), [np.asarray(h) for h in json.loads(sys.argv[2])], sys.argv[3]
ds = synthetic.make(n_users=300, n_items=60, seed=0, mean_length=15, p_next=0.7, p_topic=0.2)
m = models.get("sasrec", cfg).fit(ds, split.leave_one_out(ds), progress=False)
np.save(out, m.score_histories(hist))
print(json.dumps([h["loss"] for h in m.result.history]))
"""


@pytest.mark.slow
def test_ray_engine_trains_on_a_running_cluster(tiny, tiny_split, tmp_path):
    """A Ray head started apart from the test (`ray start --head`, token authentication on, as Ray asks of
    a cluster), joined by a fit in another process through RAY_ADDRESS, the run's storage in
    LLMREC_RAY_STORAGE: the same training as one process here, and the run's files in that storage."""
    pytest.importorskip("ray.train")
    import json
    import os
    import secrets
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    import time
    from pathlib import Path
    ray_bin = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(models.__file__).resolve().parents[1])
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    # --block keeps the head's processes in one process group, stopped together below (`ray stop` would
    # stop every Ray on the machine)
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--temp-dir", temp, "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not list(Path(temp).glob("session_*/sockets/raylet")):
            assert head.poll() is None and time.monotonic() - t0 < 120, "the Ray head did not start"
            time.sleep(0.5)
        cfg = {**CFG, "epochs": 2}
        storage = tmp_path / "storage"
        run = subprocess.run([sys.executable, "-c", FIT_ON_CLUSTER,
                              json.dumps({**cfg, "workers": 2, "engine": "ray"}),
                              json.dumps([h.tolist() for h in HIST]), str(tmp_path / "scores.npy")],
                             env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "LLMREC_RAY_STORAGE": str(storage)},
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert head.poll() is None, "the cluster goes on after the fit"
        plain = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=False)
        losses = json.loads(run.stdout.strip().splitlines()[-1])
        np.testing.assert_allclose(losses, [h["loss"] for h in plain.result.history], rtol=1e-4)
        np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), plain.score_histories(HIST), atol=1e-4)
        assert any(p.name.startswith("fit-") for p in storage.iterdir())
        # without the token the cluster refuses the fit
        bad = subprocess.run([sys.executable, "-c", FIT_ON_CLUSTER, json.dumps({**cfg, "workers": 2, "engine": "ray"}),
                              "[]", str(tmp_path / "x.npy")],
                             env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_TOKEN": "wrong"},
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and "cannot start or join Ray" in bad.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
