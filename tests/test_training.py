"""The shared training loop: early stopping keeps the best weights, resume continues where it stopped,
history and curve are written, and a checkpoint folder from another config is refused."""

import json

import numpy as np
import pytest
import torch

from llmrec import training
from llmrec.errors import LLMRecError


def _problem(scores):
    """A one-parameter model whose 'validation score' per epoch is scripted."""
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.ones(4, 1)
    it = iter(scores)
    seen = []

    def validate():
        seen.append(float(net.weight.detach()))
        return next(it)

    return net, opt, (lambda epoch: [x]), (lambda b: (net(b) - 3.0).pow(2).mean()), validate, seen


def test_early_stopping_keeps_best_weights():
    net, opt, batches, step, validate, seen = _problem([0.1, 0.3, 0.2, 0.25, 0.1, 0.9])
    res = training.fit_loop(net, opt, batches, step, validate, epochs=6, patience=2, progress=False)
    assert res.best_epoch == 2 and res.stopped_early and len(res.history) == 4
    assert float(net.weight.detach()) == pytest.approx(seen[1])
    assert res.history[0]["loss"] > res.history[-1]["loss"]


def test_on_validation_sees_each_validated_epoch_and_may_stop_training():
    net, opt, batches, step, validate, _ = _problem([0.1, 0.3, 0.2, 0.25, 0.1, 0.9])
    calls = []
    training.fit_loop(net, opt, batches, step, validate, epochs=6, patience=10, eval_every=2, progress=False,
                      on_validation=lambda epoch, score: calls.append((epoch, score)))
    assert calls == [(2, 0.1), (4, 0.3), (6, 0.2)]

    class Stop(Exception):
        pass

    def stop_at_3(epoch, score):
        if epoch == 3:
            raise Stop
    net, opt, batches, step, validate, seen = _problem([0.1, 0.3, 0.2, 0.25])
    with pytest.raises(Stop):
        training.fit_loop(net, opt, batches, step, validate, epochs=4, progress=False, on_validation=stop_at_3)
    assert len(seen) == 3


def test_resume_continues_and_matches_uninterrupted(tmp_path):
    scores = [0.1, 0.2, 0.3, 0.4]
    net, opt, batches, step, validate, _ = _problem(scores)
    full = training.fit_loop(net, opt, batches, step, validate, epochs=4, progress=False)
    w_full = float(net.weight.detach())
    net, opt, batches, step, validate, _ = _problem(scores)
    training.fit_loop(net, opt, batches, step, validate, epochs=2, progress=False,
                      checkpoint_dir=tmp_path, fingerprint={"a": 1})
    net, opt, batches, step, validate, _ = _problem(scores[2:])
    res = training.fit_loop(net, opt, batches, step, validate, epochs=4, progress=False,
                            checkpoint_dir=tmp_path, fingerprint={"a": 1})
    assert res.resumed_from == 2 and len(res.history) == 4
    assert float(net.weight.detach()) == pytest.approx(w_full)
    assert [r["loss"] for r in res.history] == [r["loss"] for r in full.history]
    hist = json.loads((tmp_path / training.HISTORY_FILE).read_text())
    assert [r["epoch"] for r in hist["history"]] == [1, 2, 3, 4]
    assert (tmp_path / training.CURVE_FILE).read_bytes()[:4] == b"\x89PNG"


def test_resume_refuses_another_config(tmp_path):
    net, opt, batches, step, validate, _ = _problem([0.1])
    training.fit_loop(net, opt, batches, step, validate, epochs=1, progress=False,
                      checkpoint_dir=tmp_path, fingerprint={"embedding_size": 8})
    net, opt, batches, step, validate, _ = _problem([0.1])
    with pytest.raises(LLMRecError, match="embedding_size: 8 there, 16 now"):
        training.fit_loop(net, opt, batches, step, validate, epochs=2, progress=False,
                          checkpoint_dir=tmp_path, fingerprint={"embedding_size": 16})


def test_divergence_is_reported():
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(LLMRecError, match="diverged"):
        training.fit_loop(net, opt, lambda e: [0], lambda b: net.weight.sum() * float("nan"), None,
                          epochs=1, progress=False)


def test_device_and_seed():
    assert training.device("cpu").type == "cpu"
    assert training.device("auto").type in ("cpu", "cuda")
    training.seed_everything(3)
    a = torch.rand(3), np.random.rand()
    training.seed_everything(3)
    b = torch.rand(3), np.random.rand()
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def _slow_problem(n_batches=10, pause=0.02):
    """Ten batches an epoch, each taking ``pause`` seconds: a time budget runs out inside an epoch."""
    import time
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    calls = []

    def batches(epoch):
        return [torch.full((4, 1), 1.0 + 0.1 * i) for i in range(n_batches)]

    def step(b):
        time.sleep(pause)
        return (net(b) - 3.0).pow(2).mean()

    def validate():
        calls.append(float(net.weight.detach()))
        return -abs(float(net.weight.detach()) - 2.0)

    return net, opt, batches, step, validate, calls


def test_budget_stops_inside_an_epoch_saves_and_resumes(tmp_path):
    net, opt, batches, step, validate, _ = _slow_problem()
    training.fit_loop(net, opt, batches, step, validate, epochs=2, progress=False)
    w_full = float(net.weight.detach())

    net, opt, batches, step, validate, calls = _slow_problem()
    res = training.fit_loop(net, opt, batches, step, validate, epochs=2, progress=False, max_seconds=0.07,
                            checkpoint_dir=tmp_path, fingerprint={"a": 1}, batches_per_epoch=10)
    assert res.out_of_time and len(res.history) == 1
    row = res.history[0]
    assert row["partial"] and 1 <= row["batches"] < 10, row
    assert len(calls) == 1 and "valid_ndcg10" in row  # no validation had happened: validated once
    saved = torch.load(tmp_path / training.RESUME_FILE, weights_only=False)
    assert saved["epoch"] == 0 and saved["batch"] == row["batches"] and saved["best_state"] is not None
    assert json.loads((tmp_path / training.HISTORY_FILE).read_text())["history"][0]["partial"]

    net, opt, batches, step, validate, calls = _slow_problem()
    res = training.fit_loop(net, opt, batches, step, validate, epochs=2, progress=False,
                            checkpoint_dir=tmp_path, fingerprint={"a": 1})
    assert res.resumed_from == 0 and not res.out_of_time
    assert [r["epoch"] for r in res.history] == [1, 2] and not any(r.get("partial") for r in res.history)
    assert float(net.weight.detach()) == pytest.approx(w_full, abs=1e-6)  # same steps as uninterrupted


def test_budget_always_makes_progress(tmp_path):
    """A budget already spent still runs one batch per call, so repeated resumes finish."""
    for _ in range(30):
        net, opt, batches, step, validate, _ = _slow_problem(n_batches=3, pause=0.0)
        res = training.fit_loop(net, opt, batches, step, validate, epochs=2, progress=False,
                                max_seconds=1e-9, checkpoint_dir=tmp_path, fingerprint={"a": 1})
        if not res.out_of_time:
            break
    assert [r["epoch"] for r in res.history] == [1, 2]
