"""Community cold start: relation files, the relation-weighted mix for any model, the text blend, the
learning floor on a synthetic social graph, and the command line."""

import json

import numpy as np
import pandas as pd
import pytest
from test_encoders import BagOfWords

from llmrec import community, encoders, models, synthetic
from llmrec.cli import main
from llmrec.errors import DataError, LLMRecError

encoders.register("test-bow", BagOfWords, "bag-of-words stub for tests")


@pytest.fixture(scope="module")
def social():
    """600 users x 200 items with five friends each; a quarter of the users' histories hidden."""
    ds = synthetic.make(600, 200, seed=0, friends=5)
    train, targets = community.hold_out_users(ds, 0.25, seed=0)
    known = {u for u, h in zip(train.users.ids(), train.histories()) if len(h)}
    pairs = ds.meta["relations"]
    return ds, train, targets, community.Relations.from_pairs(pairs[pairs.related_id.isin(known)])


def test_generator_graph_carries_signal_and_leaves_the_log_alone():
    plain, social_ds = synthetic.make(300, 100, seed=3), synthetic.make(300, 100, seed=3, friends=4)
    np.testing.assert_array_equal(plain.interactions.item, social_ds.interactions.item)
    rel = social_ds.meta["relations"]
    assert len(rel) > 300 and (rel.user_id != rel.related_id).all()
    both = set(zip(rel.user_id, rel.related_id))
    assert all((v, u) in both for u, v in both)  # mutual: one row per direction
    # related users share favourite topics more often than random pairs do
    topic = social_ds.meta["topic_of"]
    hist = dict(zip(social_ds.users.ids(), social_ds.histories()))
    fav = {u: np.bincount(topic[h], minlength=topic.max() + 1).argmax() for u, h in hist.items()}
    same = np.mean([fav[u] == fav[v] for u, v in both])
    users = list(fav)
    rng = np.random.default_rng(0)
    rand = np.mean([fav[users[a]] == fav[users[b]] for a, b in rng.integers(0, len(users), (2000, 2))])
    assert same > 1.8 * rand, (same, rand)
    assert set(social_ds.meta["profiles"]) == set(users)


def test_relations_beat_popularity_for_users_with_no_history(social):
    _, train, targets, rel = social
    pop = models.get("popular").fit(train, progress=False)
    knn = models.get("itemknn", threads=1).fit(train, progress=False)
    base = community.evaluate_cold(pop, targets)
    ours = community.evaluate_cold(knn, targets, rel)
    assert ours["users"] == base["users"] == 150 and ours["with_relations"] == 150
    assert ours["HR@20"] > 1.5 * base["HR@20"] + 0.05, (ours, base)
    assert ours["NDCG@10"] > 1.5 * base["NDCG@10"] + 0.01, (ours, base)
    # popularity is the same for every history: relations cannot change what it ranks
    assert community.evaluate_cold(pop, targets, rel)["HR@10"] == base["HR@10"]


def test_scores_are_the_weighted_mean_of_standardised_neighbour_scores(social):
    _, train, targets, _ = social
    knn = models.get("itemknn", threads=1).fit(train, progress=False)
    a, b, gone = [u for u in train.users.ids() if len(knn.history_of(u))][:2] + [next(iter(targets))]
    hist = {u: knn.history_of(u) for u in (a, b, gone)}
    got = community.scores(knn, [{a: 1.0, b: 3.0}, {b: 1.0, gone: 5.0}, {}], hist)
    raw = knn.score_histories([hist[a], hist[b]]).astype(np.float64)
    z = (raw - raw.mean(1, keepdims=True)) / raw.std(1, keepdims=True)
    np.testing.assert_allclose(got[0], 0.25 * z[0] + 0.75 * z[1], atol=1e-5)
    np.testing.assert_allclose(got[1], z[1], atol=1e-5)  # a related user with no history counts for nothing
    assert not got[2].any()  # no related users: every item 0


@pytest.mark.parametrize("name", ["popular", "itemknn", "zero-shot", "sasrec"])
def test_any_registered_model_recommends_from_relations(social, name):
    _, train, targets, rel = social
    cfg = {"zero-shot": {"encoder": "test-bow", "cache": False},
           "sasrec": {"epochs": 1, "threads": 1, "embedding_size": 16, "eval_users": 50},
           "itemknn": {"threads": 1}}.get(name, {})
    m = models.get(name, **cfg).fit(train, progress=False)
    user = next(iter(targets))
    recs = community.recommend(m, [rel.of(user)], k=5, explain=True)
    assert recs.item_ids.shape == (1, 5) and all(i is not None for i in recs.item_ids[0])
    assert np.all(np.diff(recs.scores[0]) <= 0)
    for e in recs.explanations[0]:
        assert set(e["related_users"]) <= set(rel.of(user)) and e["reason"]


def test_text_profile_is_blended_in(social):
    ds, train, targets, rel = social
    zs = models.get("zero-shot", encoder="test-bow", cache=False).fit(train, progress=False)
    prof = ds.meta["profiles"]
    text = community.evaluate_cold(zs, targets, texts=prof)
    both = community.evaluate_cold(zs, targets, rel, texts=prof)
    pop = community.evaluate_cold(models.get("popular").fit(train, progress=False), targets)
    assert text["HR@20"] > pop["HR@20"] and both["HR@20"] > pop["HR@20"], (text, both, pop)
    user = next(iter(targets))
    only_text = community.scores(zs, [rel.of(user)], {}, [prof[user]], text_weight=1.0)
    np.testing.assert_allclose(only_text[0], community.scores(zs, [{}], {}, [prof[user]])[0], atol=1e-6)
    knn = models.get("itemknn", threads=1).fit(train, progress=False)
    with pytest.raises(LLMRecError, match="cannot read a text profile"):
        community.scores(knn, [rel.of(user)], {}, ["I like cooking"])
    with pytest.raises(LLMRecError, match="text_weight"):
        community.scores(zs, [{}], {}, ["x"], text_weight=1.5)


# -- relation files ------------------------------------------------------------------------------------
def test_read_with_a_column_mapping_weights_and_parquet(tmp_path):
    f = tmp_path / "rel.csv"
    f.write_text("who,friend,w\nnew1,u1,1\nnew1,u2,2.5\nnew1,u1,0.5\nnew2,u2,1\n")
    rel = community.Relations.read(f, {"u1", "u2"}, {"user_id": "who", "related_id": "friend", "weight": "w"})
    assert rel.of("new1") == {"u1": 1.5, "u2": 2.5} and rel.of("new2") == {"u2": 1.0}
    assert rel.of("nobody") == {} and len(rel) == 3
    pq = tmp_path / "rel.parquet"
    pd.DataFrame({"user_id": ["a", "a"], "related_id": ["u1", "u2"]}).to_parquet(pq)
    assert community.Relations.read(pq, {"u1", "u2"}).of("a") == {"u1": 1.0, "u2": 1.0}


@pytest.mark.parametrize("body, line, field, message", [
    ("user_id,related_id\nn,u1\n\nn,ghost\n", 4, "related_id", "unknown user 'ghost'"),
    ("user_id,related_id\nu1,u1\n", 2, "related_id", "related to themself"),
    ("user_id,related_id,weight\nn,u1,1\nn,u2,-1\n", 3, "weight", "not a number above 0"),
    ("user_id,related_id,weight\nn,u1,heavy\n", 2, "weight", "not a number above 0"),
    ("user_id,related_id\n,u1\n", 2, "user_id", "empty user id"),
])
def test_bad_relation_rows_name_file_line_and_field(tmp_path, body, line, field, message):
    f = tmp_path / "rel.csv"
    f.write_text(body)
    with pytest.raises(DataError, match=message) as e:
        community.Relations.read(f, {"u1", "u2"})
    assert str(f) in str(e.value) and f"line {line}" in str(e.value) and repr(field) in str(e.value)


def test_unknown_users_dropped_with_a_count_and_missing_columns(tmp_path):
    f = tmp_path / "rel.csv"
    f.write_text("user_id,related_id\nn,u1\nn,ghost\nn,phantom\n")
    rel = community.Relations.read(f, {"u1"}, unknown_users="drop")
    assert rel.of("n") == {"u1": 1.0} and rel.dropped == 2
    g = tmp_path / "other.csv"
    g.write_text("a,b\nn,u1\n")
    with pytest.raises(DataError, match="no 'user_id' column"):
        community.Relations.read(g, {"u1"})
    with pytest.raises(LLMRecError, match="unknown_users"):
        community.Relations.read(f, {"u1"}, unknown_users="skip")


# -- the command line --------------------------------------------------------------------------------
def test_cli_recommends_for_a_new_user_from_relations(tmp_path, capsys):
    f = tmp_path / "rel.csv"
    f.write_text("user_id,friend\nnewbie,u3\nnewbie,u7\n")
    argv = ["recommend", "--dataset", "synthetic-300-100-0", "--model", "itemknn", "--set", "threads=1",
            "--relations", str(f), "--relation-columns", "related_id=friend", "--user", "newbie", "-k", "4"]
    assert main(argv + ["--json", "--explain"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["user_id"] == "newbie" and out["related_users"] == 2 and len(out["items"]) == 4
    ds = synthetic.make(300, 100, 0)
    m = models.get("itemknn", threads=1).fit(ds, progress=False)
    want = community.recommend(m, [{"u3": 1.0, "u7": 1.0}], k=4).item_ids[0].tolist()
    assert [r["item_id"] for r in out["items"]] == want
    f.write_text("user_id,friend\nnewbie,u3\nnewbie,nobody\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{f}, line 3, field 'related_id': unknown user 'nobody'" in err and "Traceback" not in err
    assert main(argv[:-4] + ["--user", "u3", "-k", "4"]) == 2
    assert "has a history" in capsys.readouterr().err
