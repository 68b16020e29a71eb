"""Batch recommend: the Parquet schema and contents, resume after a kill, refusals, the user list, and the
Ray engine writing the same files as the local one."""

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import kill_mid_run
from test_encoders import BagOfWords

from llmrec import batch, cli, datasets, encoders, models, pipeline
from llmrec.errors import DataError, LLMRecError

encoders.register("test-bow", BagOfWords, "bag-of-words stub for tests")
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def data():
    return datasets.load("synthetic-300-500-0")


def _checkpoint(data, folder: Path, name: str, config: dict) -> Path:
    pipeline.fit_card_save(models.get(name, config), data, None, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def knn(data, tmp_path_factory):
    return _checkpoint(data, tmp_path_factory.mktemp("ck") / "knn", "itemknn", {"threads": 1})


def _frame(out) -> pd.DataFrame:
    return pd.read_parquet(out)


def test_every_known_user_top_k_with_the_schema(knn, tmp_path):
    res = batch.recommend(knn, tmp_path / "out", k=7, chunk_size=64)
    assert res["users"] == 300 and res["chunks"] == 5 and res["chunks_computed"] == 5 and res["rows"] == 2100
    schema = pq.read_schema(tmp_path / "out" / "part-00000.parquet")
    assert [(f.name, str(f.type)) for f in schema] == [("user_id", "string"), ("rank", "int32"),
                                                       ("item_id", "string"), ("score", "float")]
    df = _frame(tmp_path / "out")
    model = models.load_model(knn)
    assert list(dict.fromkeys(df.user_id)) == list(model.users.ids())  # every user, in checkpoint order
    recs = model.recommend(users=["u3", "u200"], k=7)
    for row, uid in enumerate(["u3", "u200"]):
        mine = df[df.user_id == uid]
        assert mine["rank"].tolist() == list(range(1, 8))
        assert mine.item_id.tolist() == list(recs.item_ids[row])
        np.testing.assert_allclose(mine.score.to_numpy(), recs.scores[row], rtol=0, atol=1e-6)
        assert not set(mine.item_id) & set(model.catalog.ids.ids(model.history_of(uid)))


def test_explain_adds_the_reason_as_json(knn, tmp_path):
    batch.recommend(knn, tmp_path / "out.parquet", k=3, users=["u1", "u2"], explain=True)
    df = _frame(tmp_path / "out.parquet")
    assert list(df.columns) == ["user_id", "rank", "item_id", "score", "reason"] and len(df) == 6
    expl = models.load_model(knn).recommend(users=["u1", "u2"], k=3, explain=True).explanations
    assert [json.loads(r) for r in df.reason] == json.loads(json.dumps(expl[0] + expl[1]))
    assert not (tmp_path / ".out.parquet.parts").exists()  # one file: the parts are joined and removed


def test_a_killed_run_resumes_from_its_finished_chunks(knn, tmp_path):
    out = tmp_path / "out"
    batch.recommend(knn, out, k=5, chunk_size=100)
    full = _frame(out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name != "part-00001.parquet"}
    (out / "part-00001.parquet").unlink()  # the chunk being written when the run was killed ...
    (out / ".part-00001.parquet.4242.tmp").write_bytes(b"PAR1 half")  # ... left its temporary file
    (out / "._job.json.4242.tmp").write_text("{")
    time.sleep(0.01)
    res = batch.recommend(knn, out, k=5, chunk_size=100)
    assert res["chunks_computed"] == 1 and res["chunks_resumed"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == kept
    assert sorted(p.name for p in out.iterdir()) == ["_job.json", "part-00000.parquet", "part-00001.parquet",
                                                     "part-00002.parquet"]
    pd.testing.assert_frame_equal(_frame(out), full)
    assert batch.recommend(knn, out, k=5, chunk_size=100)["chunks_computed"] == 0  # finished: nothing to do


def test_another_jobs_results_are_refused_unless_overwrite(knn, tmp_path):
    out = tmp_path / "out"
    batch.recommend(knn, out, k=5, chunk_size=100)
    with pytest.raises(LLMRecError, match=r"another job \(differs in: k\).*--overwrite"):
        batch.recommend(knn, out, k=10, chunk_size=100)
    res = batch.recommend(knn, out, k=10, chunk_size=100, overwrite=True)
    assert res["chunks_computed"] == 3 and _frame(out).groupby("user_id").size().eq(10).all()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LLMRecError, match="not batch results .*notes.txt"):
        batch.recommend(knn, tmp_path / "mine", k=5, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    batch.recommend(knn, tmp_path / "one.parquet", k=2, users=["u1"])
    with pytest.raises(LLMRecError, match="already exists.*--overwrite"):
        batch.recommend(knn, tmp_path / "one.parquet", k=2, users=["u1"])


def test_users_file(knn, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("u5\n\nu9\n")
    batch.recommend(knn, tmp_path / "out", k=2, users=users)
    assert _frame(tmp_path / "out").user_id.tolist() == ["u5", "u5", "u9", "u9"]
    users.write_text("u5\nu9\nnobody\n")
    with pytest.raises(DataError, match=r"users.txt, line 3: unknown user 'nobody'"):
        batch.recommend(knn, tmp_path / "other", k=2, users=users)
    users.write_text("u5\nu9\nu5\n")
    with pytest.raises(DataError, match=r"line 3: user 'u5' listed twice \(first on line 1\)"):
        batch.recommend(knn, tmp_path / "other", k=2, users=users)
    users.write_text("u1\nnobody\n")
    code = cli.main(["batch", "recommend", "--model-dir", str(knn), "--out", str(tmp_path / "cli"),
                     "--users", str(users), "-k", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "users.txt, line 2: unknown user 'nobody'" in err
    assert not (tmp_path / "cli").exists() or not list((tmp_path / "cli").glob("part-*"))


def test_cli_json(knn, tmp_path, capsys):
    code = cli.main(["batch", "recommend", "--model-dir", str(knn), "--out", str(tmp_path / "o"), "-k", "4",
                     "--chunk-size", "128", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["users"] == 300 and res["rows"] == 1200 and res["chunks"] == 3
    assert res["engine"] == "local" and res["users_per_second"] > 0


def test_without_ray_the_engine_names_the_extra(knn, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = cli.main(["batch", "recommend", "--model-dir", str(knn), "--out", str(tmp_path / "o"),
                     "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err == "llmrec: error: --engine ray needs the 'ray' extra: pip install 'llmrec[ray]'\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("address,message", [
    ("127.0.0.1:9", "cannot reach a Ray cluster at 127.0.0.1:9"),  # nothing listens
    ("ray://127.0.0.1:9", "cannot reach a Ray cluster at ray://127.0.0.1:9"),
    ("10.255.255.1:6379", "cannot reach a Ray cluster at|cannot start or join Ray"),  # no route, or not Ray
    ("nowhere", "expected auto, HOST:PORT or ray://HOST:PORT")])
def test_an_unreachable_address_fails_within_seconds(knn, tmp_path, capsys, address, message):
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    code = cli.main(["batch", "recommend", "--model-dir", str(knn), "--out", str(tmp_path / "o"),
                     "--engine", "ray", "--address", address])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("llmrec:")]
    assert code == 2 and time.perf_counter() - t0 < 10
    assert len(lines) == 1 and re.search(message, lines[0]), lines


# -- the Ray engine: the same files as the local one ----------------------------------------------------
@pytest.mark.slow
def test_ray_writes_the_local_engines_files(data, tmp_path, local_ray):
    ck = tmp_path / "ck"
    checkpoints = {
        "itemknn": _checkpoint(data, ck / "knn", "itemknn", {"threads": 1}),
        "zero-shot": _checkpoint(data, ck / "zs", "zero-shot", {"encoder": "test-bow", "cache": False}),
        "sasrec": _checkpoint(data, ck / "sas", "sasrec", {"epochs": 1, "embedding_size": 16, "layers": 1,
                                                           "max_history": 20, "threads": 1}),
    }
    for name, folder in checkpoints.items():
        local = batch.recommend(folder, tmp_path / f"{name}-local", k=10, chunk_size=64)
        ray = batch.recommend(folder, tmp_path / f"{name}-ray", k=10, chunk_size=64, engine="ray", workers=2)
        assert ray["workers"] == 2 and ray["chunks_computed"] == local["chunks_computed"] == 5, name
        a, b = _frame(tmp_path / f"{name}-local"), _frame(tmp_path / f"{name}-ray")
        assert len(a) == 3000, name
        pd.testing.assert_frame_equal(a.drop(columns="score"), b.drop(columns="score"))
        np.testing.assert_allclose(a.score, b.score, rtol=0, atol=1e-5, err_msg=name)
    out = tmp_path / "itemknn-ray"  # Ray resumes too: only the missing chunk is recomputed
    (out / "part-00003.parquet").unlink()
    res = batch.recommend(checkpoints["itemknn"], out, k=10, chunk_size=64, engine="ray")
    assert res["chunks_computed"] == 1 and res["workers"] == 1
    pd.testing.assert_frame_equal(_frame(out), _frame(tmp_path / "itemknn-local"))


def test_sigkill_mid_run_leaves_whole_parts_and_the_rerun_completes(knn, tmp_path):
    out = tmp_path / "out"
    done = kill_mid_run(f"from llmrec import batch; batch.recommend({str(knn)!r}, {str(out)!r}, k=10, "
                        "chunk_size=1, explain=True)", out)
    assert 20 <= len(done) < 300
    for p in done:  # every part file is whole
        assert pq.read_metadata(p).num_rows == 10
    res = batch.recommend(knn, out, k=10, chunk_size=1, explain=True)
    assert res["chunks_resumed"] >= len(done) and res["chunks_computed"] == 300 - res["chunks_resumed"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    clean = tmp_path / "clean"
    batch.recommend(knn, clean, k=10, chunk_size=1, explain=True)
    pd.testing.assert_frame_equal(_frame(out), _frame(clean))
