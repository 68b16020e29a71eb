"""The ensemble: fusion arithmetic, parallel member training, checkpoints with every member, bad configs."""

import numpy as np
import pytest

from llmrec import models
from llmrec.errors import ConfigError, LLMRecError, UnknownNameError

SMALL = dict(embedding_size=32, max_history=20, epochs=6, batch_size=64, learning_rate=5e-3, dropout=0.1,
             threads=1)
TWO_SEEDS = {"members": ["sasrec", "sasrec"], "configs": [SMALL, dict(SMALL, seed=1)]}


@pytest.fixture(scope="module")
def pair(tiny, tiny_split):
    return models.get("ensemble", TWO_SEEDS).fit(tiny, tiny_split, progress=False)


def _log_softmax(s):
    s = s - s.max(1, keepdims=True)
    return s - np.log(np.exp(s).sum(1, keepdims=True))


def test_logp_fusion_is_the_mean_of_member_log_probabilities(pair, tiny):
    hist = [tiny.histories()[u][:5] for u in range(4)]
    a, b = (np.asarray(m.score_histories(hist), np.float64) for m in pair.members)
    want = 0.5 * _log_softmax(a) + 0.5 * _log_softmax(b)
    np.testing.assert_allclose(pair.score_histories(hist), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, b), "the two seeds trained the same model"


def test_weights_and_zscore_fusion(pair, tiny):
    hist = [tiny.histories()[0][:5]]
    a, b = (np.asarray(m.score_histories(hist), np.float64) for m in pair.members)
    z = [(s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True) for s in (a, b)]
    ens = models.get("ensemble", {**TWO_SEEDS, "weights": [3.0, 1.0], "fusion": "zscore"})
    ens.catalog, ens.members = pair.catalog, pair.members
    np.testing.assert_allclose(ens.score_histories(hist), 0.75 * z[0] + 0.25 * z[1], rtol=1e-5, atol=1e-5)


def test_explanations_carry_every_members_rank(pair, tiny):
    h = tiny.histories()[0][:5]
    rec = pair.recommend(histories=[list(tiny.catalog.ids.ids(h))], k=3, explain=True)
    first = pair.catalog.ids.indices([rec.item_ids[0][0]])[0]
    e = rec.explanations[0][0]
    assert [m["model"] for m in e["members"]] == ["sasrec", "sasrec"]
    ranks = []
    for m in pair.members:
        s = np.asarray(m.score_histories([h]), np.float64)[0]
        s[h] = -np.inf
        ranks.append(int((s > s[first]).sum()) + 1)
    assert [m["rank"] for m in e["members"]] == ranks


def test_parallel_workers_train_the_same_members(pair, tiny, tiny_split):
    par = models.get("ensemble", {**TWO_SEEDS, "workers": 2}).fit(tiny, tiny_split, progress=False)
    hist = [tiny.histories()[u] for u in range(6)]
    np.testing.assert_allclose(par.score_histories(hist), pair.score_histories(hist), rtol=1e-5, atol=1e-5)
    assert [i["model"] for i in par.member_info] == ["sasrec", "sasrec"]


def test_checkpoint_holds_members_with_training_state_and_resumes(tiny, tiny_split, tmp_path):
    out = tmp_path / "ens"
    m = models.get("ensemble", TWO_SEEDS)
    m.fit(tiny, tiny_split, progress=False, checkpoint_dir=out)
    m.save(out)
    for f in ("members/0-sasrec", "members/1-sasrec"):
        assert (out / f / "config.json").exists() and (out / f / "train_state.pt").exists()
    back = models.load_model(out)
    hist = [tiny.histories()[u] for u in range(3)]
    np.testing.assert_allclose(back.score_histories(hist), m.score_histories(hist), rtol=1e-5, atol=1e-5)
    again = models.get("ensemble", TWO_SEEDS)
    again.fit(tiny, tiny_split, progress=False, checkpoint_dir=out)  # both members finished: resumed, not retrained
    assert [i["training"]["resumed_from_epoch"] for i in again.member_info] == [SMALL["epochs"]] * 2
    np.testing.assert_allclose(again.score_histories(hist), m.score_histories(hist), rtol=1e-5, atol=1e-5)
    import shutil
    shutil.rmtree(out / "members" / "1-sasrec")
    with pytest.raises(LLMRecError, match="member checkpoint"):
        models.load_model(out)


@pytest.mark.parametrize("cfg, error, words", [
    ({"members": ["sasrec", "nope"]}, UnknownNameError, "nope"),
    ({"members": ["sasrec", "itemknn"], "configs": [{}]}, ConfigError, "1 entries for 2 members"),
    ({"members": ["sasrec", "itemknn"], "weights": [1.0]}, ConfigError, "1 weights for 2 members"),
    ({"members": ["sasrec", "itemknn"], "weights": [1.0, -1.0]}, ConfigError, "must be >= 0"),
    ({"members": ["sasrec", "itemknn"], "configs": [{}, {"embedding_size": 8}]}, ConfigError,
     "member 1 (itemknn)"),
    ({"members": ["sasrec"], "configs": [{"dropout": "high"}]}, ConfigError, "member 0 (sasrec)"),
    ({"members": ["sasrec", "itemknn"], "shared": {"embeding_size": 8}}, ConfigError, "embeding_size"),
    ({"members": ["ensemble"]}, ConfigError, "cannot contain an ensemble"),
    ({"members": []}, ConfigError, "at least one"),
    ({"workers": 0}, ConfigError, "workers"),
    ({"fusion": "vote"}, ConfigError, "fusion"),
])
def test_bad_config_names_the_problem(cfg, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        models.get("ensemble", cfg)


def test_shared_keys_go_to_members_that_have_them():
    m = models.get("ensemble", {"members": ["sasrec", "itemknn"], "shared": {"embedding_size": 16}})
    from llmrec.models.ensemble import member_configs
    assert member_configs(m.config) == [{"embedding_size": 16}, {}]
