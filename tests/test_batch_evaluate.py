"""Sharded evaluation: the in-process evaluator's figures (1e-9) from shards of users, locally and on a
local Ray of 2 CPUs; from a named data set, a CSV log with cleaning, a partitioned Parquet URI; refusals."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from llmrec import batch, batch_evaluate, cli, datasets, evaluate, models, pipeline, split
from llmrec.errors import LLMRecError

NAME = "synthetic-300-500-0"


def _fit(tmp_path, name="itemknn", config=None, **data) -> tuple:
    ds = pipeline.load_data(**data)
    sp = split.leave_one_out(ds)
    folder = tmp_path / "ck"
    pipeline.fit_card_save(models.get(name, config or {"threads": 1}), ds, sp, folder, progress=False)
    return folder, ds, sp


def _in_process(folder, ds, sp, stage="test", ks=(10, 20)):
    return evaluate.evaluate(models.load_model(folder), sp, ds.n_users, ds.n_items, ks=ks, stage=stage,
                             progress=False)


def _same(res: dict, ref) -> None:
    assert res["users_evaluated"] == ref.n_users and res["candidates"] == ref.n_candidates
    assert res["metrics"].keys() == ref.metrics.keys()
    for k, v in ref.metrics.items():
        assert abs(res["metrics"][k] - v) <= 1e-9, (k, res["metrics"][k], v)


@pytest.fixture(scope="module")
def log_frame():
    """A log where one item is seen by a single user only: a shard that drops it from the candidates, or
    a wrong union, changes the ranks."""
    ds = datasets.load(NAME, quiet=True)
    inter = ds.interactions
    frame = pd.DataFrame({"user_id": ds.users.ids(inter.user).astype(str),
                          "item_id": ds.catalog.ids.ids(inter.item).astype(str), "timestamp": inter.timestamp,
                          "rating": (np.arange(len(inter)) % 5 + 1).astype(float)})
    rare = pd.DataFrame({"user_id": ["u299"], "item_id": ["i499"], "timestamp": [1.0], "rating": [5.0]})
    dup = frame.iloc[:40].assign(timestamp=frame.timestamp.iloc[:40] + 0.5)  # repeated user-item pairs
    return pd.concat([frame[frame.item_id != "i499"], rare, dup], ignore_index=True)


@pytest.mark.parametrize("shards", [1, 2, 7])
def test_shards_give_the_in_process_figures(tmp_path, shards):
    folder, ds, sp = _fit(tmp_path, dataset=NAME)
    ref = _in_process(folder, ds, sp)
    _same(batch_evaluate.evaluate(folder, shards=shards), ref)
    valid = batch_evaluate.evaluate(folder, shards=shards, stage="valid", ks=(5,))
    _same(valid, _in_process(folder, ds, sp, stage="valid", ks=(5,)))


def test_a_cleaned_csv_log_and_a_partitioned_parquet_uri(tmp_path, log_frame):
    log_frame.to_csv(tmp_path / "log.csv", index=False)
    cleaning = {"duplicates": "drop", "min_rating": 2.0}
    ds = pipeline.load_data(interactions=tmp_path / "log.csv", cleaning=cleaning)
    sp = split.leave_one_out(ds)
    pipeline.fit_card_save(models.get("itemknn", {"threads": 1}), ds, sp, tmp_path / "ck", progress=False)
    ref = _in_process(tmp_path / "ck", ds, sp)
    assert ref.n_candidates == ds.n_items and "i499" in ds.catalog.ids  # one shard alone sees i499
    _same(batch_evaluate.evaluate(tmp_path / "ck", shards=5), ref)
    table = pa.Table.from_pandas(log_frame.assign(bucket=np.arange(len(log_frame)) % 3), preserve_index=False)
    pads.write_dataset(table, tmp_path / "log", format="parquet", partitioning=["bucket"],
                       partitioning_flavor="hive", max_rows_per_group=700)
    folder, ds, sp = _fit(tmp_path / "pq", interactions=f"file://{tmp_path / 'log'}")
    _same(batch_evaluate.evaluate(folder, shards=4), _in_process(folder, ds, sp))


def test_refusals(tmp_path, log_frame, capsys):
    log_frame.to_csv(tmp_path / "log.csv", index=False)
    ds = pipeline.load_data(interactions=tmp_path / "log.csv", cleaning={"k_core": 2})
    pipeline.fit_card_save(models.get("itemknn", {"threads": 1}), ds, None, tmp_path / "core", progress=False)
    with pytest.raises(LLMRecError, match="cleaned with a k-core, which depends on every user"):
        batch_evaluate.evaluate(tmp_path / "core")
    log_frame.drop(columns="timestamp").to_csv(tmp_path / "untimed.csv", index=False)
    ds = pipeline.load_data(interactions=tmp_path / "untimed.csv")
    pipeline.fit_card_save(models.get("itemknn", {"threads": 1}), ds, None, tmp_path / "untimed", progress=False)
    with pytest.raises(LLMRecError, match="no timestamps: leave-one-out orders it by one random permutation"):
        batch_evaluate.evaluate(tmp_path / "untimed", shards=2)
    capsys.readouterr()
    code = cli.main(["batch", "evaluate", "--model-dir", str(tmp_path / "core"), "-k", "10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "k-core" in err
    with pytest.raises(LLMRecError, match="shards must be at least 1"):
        batch_evaluate.evaluate(tmp_path / "core", shards=0)


def test_cli_json(tmp_path, capsys):
    folder, ds, sp = _fit(tmp_path, dataset=NAME)
    code = cli.main(["batch", "evaluate", "--model-dir", str(folder), "-k", "10", "--shards", "3", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["shards"] == 3 and res["engine"] == "local"
    _same(res, _in_process(folder, ds, sp, ks=(10,)))
    assert "3 shard(s), per-shard sums combined" in res["protocol"]


def test_without_ray_the_engine_names_the_extra(tmp_path, capsys, monkeypatch):
    folder, _, _ = _fit(tmp_path, dataset=NAME)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = cli.main(["batch", "evaluate", "--model-dir", str(folder), "--engine", "ray"])
    assert code == 2 and capsys.readouterr().err == ("llmrec: error: --engine ray needs the 'ray' extra: "
                                                     "pip install 'llmrec[ray]'\n")


def test_an_unreachable_address_fails_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray")
    folder, _, _ = _fit(tmp_path, dataset=NAME)
    t0 = time.perf_counter()
    code = cli.main(["batch", "evaluate", "--model-dir", str(folder), "--engine", "ray", "--address", "127.0.0.1:9"])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("llmrec:")]
    assert code == 2 and time.perf_counter() - t0 < 10
    assert len(lines) == 1 and lines[0].startswith("llmrec: error: cannot reach a Ray cluster at 127.0.0.1:9 (")


@pytest.mark.slow
def test_ray_shards_give_the_in_process_figures(tmp_path, log_frame):
    ray = pytest.importorskip("ray")
    folder, ds, sp = _fit(tmp_path, "sasrec", {"epochs": 1, "embedding_size": 16, "layers": 1, "max_history": 20,
                                                "threads": 1}, dataset=NAME)
    ref = _in_process(folder, ds, sp)
    src = str(Path(batch.__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": "1"}})
    try:
        res = batch_evaluate.evaluate(folder, engine="ray")
        assert res["shards"] == 2 and res["engine"] == "ray"
        _same(res, ref)
        log_frame.drop(columns="timestamp").to_csv(tmp_path / "untimed.csv", index=False)  # a shard's refusal
        untimed, _, _ = _fit(tmp_path / "untimed", interactions=tmp_path / "untimed.csv")
        with pytest.raises(LLMRecError, match="^the log has no timestamps: leave-one-out orders it"):
            batch_evaluate.evaluate(untimed, engine="ray")
    finally:
        ray.shutdown()
