"""SASRec: it learns the synthetic Markov structure (beats popularity by a clear margin), and bad input
(too little data, empty histories, another catalogue, unknown config keys) gets a clear error."""

import json

import numpy as np
import pandas as pd
import pytest

from llmrec import models, split
from llmrec.data import build_dataset
from llmrec.errors import ConfigError, DataError, LLMRecError

FAST = dict(embedding_size=32, max_history=20, epochs=12, batch_size=64, learning_rate=5e-3, dropout=0.1,
            patience=4, threads=1)


@pytest.fixture(scope="module")
def sasrec(tiny, tiny_split):
    return models.get("sasrec", FAST).fit(tiny, tiny_split, progress=False)


def test_learns_sequences_beyond_popularity(sasrec, beats_popularity):
    ours = beats_popularity(sasrec)
    assert ours["HR@10"] > 0.45, ours
    hist = sasrec.result.history
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert sasrec.result.best_epoch >= 2


def test_empty_history_scores_popular_items(sasrec, tiny):
    s = sasrec.score_histories([np.array([], dtype=np.int64)])
    assert np.isfinite(s).all()
    assert int(np.argmax(s[0])) == int(np.argmax(sasrec.popularity))


def test_long_history_is_cut_to_max_history(sasrec):
    long = np.arange(50) % 60
    a = sasrec.score_histories([long])
    b = sasrec.score_histories([long[-FAST["max_history"]:]])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="unknown key.*'hidden'"):
        models.get("sasrec", {"hidden": 64})
    with pytest.raises(ConfigError, match="embedding_size"):
        models.get("sasrec", {"embedding_size": "big"})
    with pytest.raises(ConfigError, match="heads: embedding_size 10 must be divisible by heads 3"):
        models.get("sasrec", embedding_size=10, heads=3, epochs=1)


def test_too_small_to_learn_from():
    df = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1, 2]})
    ds = build_dataset("two-rows", df, pd.DataFrame({"item_id": ["x", "y"], "title": ["X", "Y"]}))
    with pytest.raises(DataError, match="too small to split"):
        split.leave_one_out(ds)
    with pytest.raises(DataError, match="2 or more items"):
        models.get("sasrec", epochs=1).fit(ds, progress=False)


def test_checkpoint_from_another_version_is_refused(sasrec, tmp_path):
    folder = sasrec.save(tmp_path / "ck")
    meta = json.loads((folder / "config.json").read_text())
    meta["llmrec_version"] = "99.0.0"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LLMRecError, match="written by llmrec 99.0.0"):
        models.load_model(folder)


def test_checkpoint_from_another_catalogue_is_refused(sasrec, tmp_path):
    folder = sasrec.save(tmp_path / "ck")
    assert (folder / "training_curve.png").exists() and (folder / "training_history.json").exists()
    cat = pd.read_parquet(folder / "catalog.parquet")
    cat.iloc[:-1].to_parquet(folder / "catalog.parquet")
    meta = json.loads((folder / "config.json").read_text())
    meta["n_items"] -= 1
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LLMRecError, match="another catalogue"):
        models.load_model(folder)


def test_cli_train_resume_and_evaluate(tmp_path, capsys):
    from llmrec import cli
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic-120-40-2", "--model", "sasrec", "--out", str(out), "--json",
            "--set", "embedding_size=16", "--set", "max_history=10", "--set", "threads=1", "--set", "epochs=2"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert (out / "training_curve.png").exists() and (out / "train_state.pt").exists()
    assert cli.main(args) == 0  # everything is done: resumes at epoch 2 and stops at once
    assert capsys.readouterr().out.split('"metrics"')[1] == first.split('"metrics"')[1]
    assert cli.main(args + ["--set", "dropout=0.3"]) == 2  # another config in the same folder
    assert "dropout: 0.2 there, 0.3 now" in capsys.readouterr().err
    assert cli.main(args[:-1] + ["epochs=3"]) == 0  # more epochs: resumes at 2
    hist = json.loads((out / "training_history.json").read_text())
    assert hist["resumed_from_epoch"] == 2 and [r["epoch"] for r in hist["history"]] == [1, 2, 3]
    capsys.readouterr()
    assert cli.main(["evaluate", "--model-dir", str(out), "--json"]) == 0
    assert cli.main(["evaluate", "--model-dir", str(out), "--dataset", "synthetic-120-41-2"]) == 2
    assert "another catalogue" in capsys.readouterr().err


def test_cosine_similarity_with_windows_and_schedule_learns(tiny, tiny_split, beats_popularity):
    """The other training options (cosine logits, every window of long histories, warm-up + cosine decay,
    bfloat16 loss) still learn the synthetic sequences."""
    cfg = {**FAST, "similarity": "cosine", "temperature": 0.1, "windows": 0, "max_history": 8,
           "lr_schedule": "cosine", "warmup_epochs": 1, "bf16": True}
    m = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=False)
    beats_popularity(m)
    s = m.score_histories([np.array([1, 2, 3])])
    assert np.abs(s).max() <= 1.0 / 0.1 + 1e-4  # cosine / temperature


def test_hstu_block_learns_is_causal_and_ignores_padding(tiny, tiny_split, beats_popularity):
    """block=hstu (gated pointwise attention with a relative position bias) learns the synthetic
    sequences; a position never sees later items; a history scores the same however much padding its
    batch needed."""
    import torch
    m = models.get("sasrec", {**FAST, "block": "hstu"}).fit(tiny, tiny_split, progress=False)
    beats_popularity(m)
    enc, table = m.net.encoder, m.item_vectors()
    seq = torch.tensor([[0, 0, 3, 5, 7, 9]])
    later = seq.clone()
    later[0, -1] = 11
    a, b = enc(seq, table), enc(later, table)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])
    h = np.array([2, 4, 6])
    alone = m.score_histories([h])[0]
    padded = m.score_histories([h, np.arange(1, 15)])[0]
    np.testing.assert_allclose(alone, padded, rtol=1e-5, atol=1e-5)


def test_training_states_from_before_the_block_option_still_resume(tiny):
    """A default-layer fingerprint leaves `block` out (states written before the option resume); an hstu
    one names it (an hstu run never resumes a transformer state)."""
    plain = models.get("sasrec", FAST)._fingerprint(tiny)
    hstu = models.get("sasrec", {**FAST, "block": "hstu"})._fingerprint(tiny)
    assert "block" not in plain and hstu["block"] == "hstu"
    assert {k: v for k, v in hstu.items() if k != "block"} == plain


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampled_softmax_learns_beyond_popularity(tiny, tiny_split, beats_popularity, sampler):
    """The large-catalogue loss (in-batch + 20 sampled negatives of 60 items, logQ-corrected) still learns."""
    m = models.get("sasrec", {**FAST, "loss": "sampled", "negatives": 20, "sampler": sampler})
    m.fit(tiny, tiny_split, progress=False)
    assert m.loss == "sampled" and m.benchmark_extra()["loss"] == "sampled"
    assert beats_popularity(m)["HR@10"] > 0.4


def test_loss_auto_picks_by_catalogue_size_and_says_so(tiny, tiny_split, monkeypatch, capsys):
    from llmrec.models import sasrec as mod
    cfg = {**FAST, "epochs": 1}
    m = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=True)
    assert m.loss == "full" and "60 items -> full softmax" in capsys.readouterr().err
    monkeypatch.setattr(mod, "SAMPLED_ABOVE", 50)
    m = models.get("sasrec", cfg).fit(tiny, tiny_split, progress=True)
    assert m.loss == "sampled" and "60 items -> sampled softmax (in-batch + 512 uniform" in capsys.readouterr().err


def test_full_softmax_over_a_too_large_catalogue_is_refused_before_training(tiny, tiny_split, monkeypatch):
    from llmrec.models import sasrec as mod
    monkeypatch.setattr(mod, "FULL_SOFTMAX_MAX", 50)
    m = models.get("sasrec", {**FAST, "loss": "full"})
    monkeypatch.setattr(mod.training, "fit_loop", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match=r"loss=full: the catalogue has 60 items.*TFLOP.*negatives=512"):
        m.fit(tiny, tiny_split, progress=False)


def test_time_budget_inside_the_first_epoch_leaves_a_usable_model_and_resumes(tiny, tiny_split, tmp_path):
    cfg = {**FAST, "epochs": 2, "batch_size": 16, "max_minutes": 1e-6}
    m = models.get("sasrec", cfg)
    m.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "ck")
    first = m.result.history
    assert m.result.out_of_time and len(first) == 1 and first[0]["partial"] and first[0]["batches"] == 1
    assert "valid_ndcg10" in first[0]  # validated once: there was no validation before the budget ran out
    loaded = models.load_model(m.save(tmp_path / "saved"))
    assert np.isfinite(loaded.score_histories([np.array([1, 2, 3])])).all()
    again = models.get("sasrec", {**cfg, "max_minutes": 0.0})
    again.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "ck")
    r = again.result
    assert r.resumed_from == 0 and not r.out_of_time and [h["epoch"] for h in r.history] == [1, 2]
    plain = models.get("sasrec", {**cfg, "max_minutes": 0.0}).fit(tiny, tiny_split, progress=False)
    assert [h["loss"] for h in r.history] == [h["loss"] for h in plain.result.history]
    np.testing.assert_allclose(again.score_histories([np.array([1, 2, 3])]),
                               plain.score_histories([np.array([1, 2, 3])]), rtol=1e-5, atol=1e-5)


def test_recommend_searches_an_index_above_the_threshold(sasrec, tiny, monkeypatch):
    """Above ANN_ABOVE items recommend searches the item vectors through HNSW (no dense scoring) and
    agrees with the exact top-k; seen and excluded items never come back. Below it: dense, as before."""
    from llmrec.index import recall_at_k
    from llmrec.models import sasrec as mod
    users = list(tiny.users.ids())[:40]
    exact = sasrec.recommend(users=users, k=10, exclude=["i0"])
    monkeypatch.setattr(mod, "ANN_ABOVE", 10)
    monkeypatch.setattr(type(sasrec), "score_histories", lambda *a: pytest.fail("scored densely"))
    approx = sasrec.recommend(users=users, k=10, exclude=["i0"], explain=True)
    assert sasrec._ann is not None and len(sasrec._ann) == tiny.n_items
    to_idx = np.vectorize(lambda i: tiny.catalog.ids.index(i))
    assert recall_at_k(to_idx(approx.item_ids), to_idx(exact.item_ids)) >= 0.95
    np.testing.assert_allclose(np.sort(approx.scores, 1), np.sort(exact.scores, 1), rtol=1e-4, atol=1e-4)
    for u, row in zip(users, approx.item_ids):
        seen = set(tiny.catalog.ids.ids(sasrec.history_of(u)))
        assert not seen & set(row) and "i0" not in set(row)
    assert len(approx.records(tiny.catalog, 0)) == 10 and "because" in approx.records(tiny.catalog, 0)[0]["explanation"]
    sasrec._ann = None


def test_threads_are_scoped_to_fit_and_scoring(tiny, tiny_split):
    """threads=1 holds while the model trains and scores; the process's own count comes back after."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        m = models.get("sasrec", {**FAST, "epochs": 1})
        real = m._logit_sides

        def spy(users, table):
            seen.append(torch.get_num_threads())
            return real(users, table)
        m._logit_sides = spy
        m.fit(tiny, tiny_split, progress=False)
        assert torch.get_num_threads() == 2
        m.score_histories([np.array([1, 2])])
        assert torch.get_num_threads() == 2 and set(seen) == {1}
    finally:
        torch.set_num_threads(before)
