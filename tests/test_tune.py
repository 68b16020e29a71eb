"""Hyper-parameter search: a study finds a config better than its worst, resumes from its SQLite file,
prunes poor torch trials from their per-epoch validation, never reads the test split, and refuses a search
space with a key the config does not have."""

import json

import pytest

from llmrec import cli, evaluate, models, tune
from llmrec.config import Checked, check_space
from llmrec.errors import ConfigError

SASREC = dict(embedding_size=16, max_history=20, epochs=5, batch_size=64, dropout=0.1, patience=5, threads=1)


@pytest.fixture(scope="module")
def knn_study(tiny, tiny_split, tmp_path_factory):
    db = tmp_path_factory.mktemp("tune") / "study.db"
    out = db.parent / "best"
    return db, out, tune.tune(tiny, tiny_split, "itemknn", trials=6, study=db, overrides={"threads": 1}, out=out)


def test_itemknn_search_finds_better_than_worst_and_trains_it(knn_study, tiny, tiny_split):
    db, out, s = knn_study
    assert (s["trials"], s["complete"], s["new_trials"]) == (6, 6, 6)
    values = [v["value"] for v in s["values"]]
    assert s["best_value"] == max(values) > min(values)
    assert s["values"][0]["params"] == {"neighbors": 40, "shrinkage": 0.0}  # the defaults come first
    best = models.load_model(out)
    assert best.card["tuning"]["best_params"] == s["best_params"]
    assert best.card["tuning"]["trials"] == 6 and best.card["tuning"]["pruned"] == 0
    assert best.config.neighbors == s["best_params"]["neighbors"]
    assert abs(tune.valid_ndcg10(best, tiny, tiny_split) - s["best_value"]) < 1e-4  # the same fit again


def test_second_call_resumes_the_study(knn_study, tiny, tiny_split):
    db, _, first = knn_study
    s = tune.tune(tiny, tiny_split, "itemknn", trials=8, study=db, overrides={"threads": 1})
    assert (s["trials"], s["new_trials"]) == (8, 2)
    assert s["best_value"] >= first["best_value"]
    again = tune.tune(tiny, tiny_split, "itemknn", trials=8, study=db, overrides={"threads": 1})
    assert (again["trials"], again["new_trials"]) == (8, 0)


def test_a_study_with_another_space_is_refused(knn_study, tiny, tiny_split):
    db, _, _ = knn_study
    with pytest.raises(ConfigError, match="another space"):
        tune.tune(tiny, tiny_split, "itemknn", trials=9, study=db, space={"neighbors": ("int", 5, 50, False)})


def test_poor_sasrec_trials_are_pruned_from_their_epochs(tiny, tiny_split, tmp_path):
    space = {"learning_rate": ("choice", [5e-3, 1e-7])}
    s = tune.tune(tiny, tiny_split, "sasrec", trials=6, study=tmp_path / "s.db", overrides=SASREC, space=space,
                  pruner_startup=1)
    assert s["pruned"] >= 1, s["values"]
    assert s["best_params"] == {"learning_rate": 5e-3}
    pruned = [v for v in s["values"] if v["state"] == "pruned"]
    assert all(v["params"]["learning_rate"] == 1e-7 for v in pruned)
    assert all(0 < v["epochs_reported"] < SASREC["epochs"] for v in pruned)


def test_search_never_reads_the_test_split(tiny, tiny_split, tmp_path, monkeypatch):
    stages = []
    real = evaluate.evaluate

    def spy(*a, **kw):
        stages.append(kw.get("stage", "test"))
        return real(*a, **kw)
    monkeypatch.setattr(evaluate, "evaluate", spy)
    tune.tune(tiny, tiny_split, "itemknn", trials=2, study=tmp_path / "s.db", overrides={"threads": 1},
              out=tmp_path / "best")
    assert stages and set(stages) == {"valid"}


def test_bad_spaces_are_refused_by_key():
    cfg = models.get_class("sasrec").Config
    with pytest.raises(ConfigError, match="'hidden_size'.*not a config key"):
        check_space(cfg, {"hidden_size": ("int", 16, 64, False)})
    with pytest.raises(ConfigError, match="'dropout'.*must be < 1"):
        check_space(cfg, {"dropout": ("float", 0.0, 1.5, False)})
    with pytest.raises(ConfigError, match="'layers'.*kind must be"):
        check_space(cfg, {"layers": ("range", 1, 3)})
    with pytest.raises(ConfigError, match="'learning_rate'.*log scale"):
        check_space(cfg, {"learning_rate": ("float", 0.0, 0.1, True)})
    with pytest.raises(ConfigError, match="no search space"):
        tune.search_space("popular")


@pytest.mark.parametrize("name", models.names())
def test_every_declared_space_is_valid(name):
    cls = models.get_class(name).Config
    if issubclass(cls, Checked) and cls.SEARCH_SPACE:
        assert check_space(cls, cls.SEARCH_SPACE) and tune.search_space(name)


def test_cli_tune_and_a_bad_space_file(tmp_path, capsys):
    bad = tmp_path / "space.json"
    bad.write_text(json.dumps({"neighbours": ["int", 5, 50, False]}))
    assert cli.main(["tune", "--dataset", "synthetic", "--model", "itemknn", "--space", str(bad),
                     "--study", str(tmp_path / "s.db")]) == 2
    assert "'neighbours'" in capsys.readouterr().err
    assert cli.main(["tune", "--dataset", "synthetic", "--model", "itemknn", "--trials", "2", "--set", "threads=1",
                     "--study", str(tmp_path / "s.db"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["trials"] == 2 and out["best_params"]["neighbors"] >= 5


def test_grid_select_chooses_on_validation_the_first_on_a_tie(tiny, tiny_split):
    chosen, tried = tune.select(tiny, tiny_split, "itemknn", "neighbors", [5, 40, 40], {"threads": 1})
    assert list(tried) == ["5", "40"]  # a repeated value is one key
    assert tried[json.dumps(chosen)] == max(tried.values())
    m = models.get("itemknn", neighbors=chosen, threads=1).fit(tiny, tiny_split, progress=False)
    assert tune.valid_ndcg10(m, tiny, tiny_split) == tried[json.dumps(chosen)]
