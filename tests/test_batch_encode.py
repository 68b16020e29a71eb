"""Batch encode: item vectors as Parquet part files from a file, a named data set or a partitioned Parquet
folder / file:// URI; resume, refusals; the folder feeding a zero-shot fit; Ray writing the local engine's
vectors. And the loaders reading a partitioned Parquet log."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import kill_mid_run
from test_encoders import BagOfWords

from llmrec import batch_encode, cli, data, datasets, encoders, models
from llmrec.errors import DataError, LLMRecError

encoders.register("test-bow", BagOfWords, "bag-of-words stub for tests")
TESTS = Path(__file__).parent
NAME = "synthetic-300-500-0"


@pytest.fixture(scope="module")
def ds():
    return datasets.load(NAME, quiet=True)


@pytest.fixture(scope="module")
def hive(ds, tmp_path_factory):
    """The catalogue as a hive-partitioned Parquet folder (bucket=0..2), small row groups."""
    root = tmp_path_factory.mktemp("cat") / "items"
    frame = ds.catalog.frame.copy()
    frame["bucket"] = np.arange(len(frame)) % 3
    pads.write_dataset(pa.Table.from_pandas(frame), root, format="parquet", partitioning=["bucket"],
                       partitioning_flavor="hive", max_rows_per_group=40)
    return root


def _reference(ds) -> np.ndarray:
    from llmrec.text import item_texts
    return BagOfWords().encode(item_texts(ds.catalog))


def test_vectors_from_a_partitioned_uri_equal_the_in_process_encoding(ds, hive, tmp_path):
    res = batch_encode.encode(tmp_path / "v", encoder="test-bow", items=f"file://{hive}", chunk_size=128)
    assert res["items"] == 500 and res["chunks"] == 4 and res["chunks_computed"] == 4
    schema = pq.read_schema(tmp_path / "v" / "part-00000.parquet")
    assert str(schema.field("item_id").type) == "string"
    vec = schema.field("vector").type
    assert vec.list_size == 64 and str(vec.value_type) == "float"
    frame = pd.read_parquet(tmp_path / "v")
    assert len(frame) == 500 and frame.item_id.is_unique
    assert set(frame.item_id) == set(ds.catalog.ids.ids())
    np.testing.assert_allclose(batch_encode.load_vectors(tmp_path / "v", ds.catalog), _reference(ds),
                               rtol=0, atol=1e-6)
    # the named data set (read by the driver) gives the same vectors, in catalogue order
    batch_encode.encode(tmp_path / "named", encoder="test-bow", dataset=NAME, chunk_size=128)
    named = pd.read_parquet(tmp_path / "named")
    assert named.item_id.tolist() == list(ds.catalog.ids.ids())
    np.testing.assert_allclose(np.stack(named.vector.to_numpy()), _reference(ds), rtol=0, atol=1e-6)


def test_a_killed_run_resumes_and_other_jobs_are_refused(hive, tmp_path):
    out = tmp_path / "v"
    batch_encode.encode(out, encoder="test-bow", items=hive, chunk_size=100)
    full = pd.read_parquet(out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*") if p.name != "part-00002.parquet"}
    (out / "part-00002.parquet").unlink()  # the chunk being written when the run was killed
    (out / ".part-00002.parquet.99.tmp").write_bytes(b"PAR1 half")
    res = batch_encode.encode(out, encoder="test-bow", items=hive, chunk_size=100)
    assert res["chunks_computed"] == 1 and res["chunks_resumed"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*") if p.name in kept} == kept
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    pd.testing.assert_frame_equal(pd.read_parquet(out), full)
    with pytest.raises(LLMRecError, match=r"another job \(differs in: chunk_size\).*--overwrite"):
        batch_encode.encode(out, encoder="test-bow", items=hive, chunk_size=50)
    assert batch_encode.encode(out, encoder="test-bow", items=hive, chunk_size=50,
                               overwrite=True)["chunks_computed"] == 10
    with pytest.raises(LLMRecError, match=r"differs in: .*normalize"):
        batch_encode.encode(out, encoder="test-bow", items=hive, chunk_size=50, normalize=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LLMRecError, match="not batch results .*notes.txt"):
        batch_encode.encode(tmp_path / "mine", encoder="test-bow", items=hive, overwrite=True)
    with pytest.raises(LLMRecError, match="either --items FILE_OR_FOLDER or --dataset"):
        batch_encode.encode(tmp_path / "x", encoder="test-bow")
    with pytest.raises(LLMRecError, match="unknown encoder 'nope'"):
        batch_encode.encode(tmp_path / "x", encoder="nope", items=hive)
    with pytest.raises(LLMRecError, match="name a folder"):
        batch_encode.encode(tmp_path / "x.parquet", encoder="test-bow", items=hive)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no Parquet files"):
        batch_encode.encode(tmp_path / "x", encoder="test-bow", items=tmp_path / "empty")
    assert not (tmp_path / "x").exists()


def test_sigkill_mid_run_leaves_whole_parts_and_the_rerun_completes(hive, tmp_path):
    out = tmp_path / "v"
    code = ("from test_encoders import BagOfWords; from llmrec import batch_encode, encoders; "
            "encoders.register('test-bow', BagOfWords); "
            f"batch_encode.encode({str(out)!r}, encoder='test-bow', items={str(hive)!r}, chunk_size=1)")
    done = kill_mid_run(code, out)
    assert 20 <= len(done) < 500
    for p in done:  # every part file is whole
        assert pq.read_metadata(p).num_rows == 1
    res = batch_encode.encode(out, encoder="test-bow", items=hive, chunk_size=1)
    assert res["chunks_resumed"] >= len(done) and res["chunks_computed"] == 500 - res["chunks_resumed"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    batch_encode.encode(tmp_path / "clean", encoder="test-bow", items=hive, chunk_size=1)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "clean"))


def test_the_folder_feeds_a_zero_shot_fit(ds, hive, tmp_path):
    out = tmp_path / "v"
    batch_encode.encode(out, encoder="test-bow", items=hive, chunk_size=128)
    fed = models.get("zero-shot", {"vectors": str(out), "cache": False}).fit(ds, progress=False)
    own = models.get("zero-shot", {"encoder": "test-bow", "cache": False}).fit(ds, progress=False)
    assert fed.encoder_name == "test-bow"  # its queries use the folder's encoder
    np.testing.assert_allclose(fed.item_vectors, own.item_vectors, rtol=0, atol=1e-6)
    a, b = fed.recommend(users=["u1", "u7"], k=10), own.recommend(users=["u1", "u7"], k=10)
    assert a.item_ids.tolist() == b.item_ids.tolist()
    # the array way, as textseq takes it
    arr = models.get("zero-shot", {"encoder": "test-bow", "cache": False}).with_text_vectors(
        batch_encode.load_vectors(out, ds.catalog)).fit(ds, progress=False)
    np.testing.assert_allclose(arr.item_vectors, own.item_vectors, rtol=0, atol=1e-6)
    with pytest.raises(LLMRecError, match="made by encoder 'test-bow', not 'minilm'"):
        models.get("zero-shot", {"vectors": str(out), "encoder": "minilm"}).fit(ds, progress=False)
    with pytest.raises(LLMRecError, match="metric=dot needs raw vectors"):
        models.get("zero-shot", {"vectors": str(out), "metric": "dot"}).fit(ds, progress=False)
    (out / "part-00001.parquet").unlink()
    with pytest.raises(DataError, match=r"unfinished: 1 of 4 part files missing \(e.g. part-00001.parquet\)"):
        models.get("zero-shot", {"vectors": str(out)}).fit(ds, progress=False)
    small = tmp_path / "small"
    frame = ds.catalog.frame.iloc[:400]
    frame.to_csv(tmp_path / "items.csv", index=False)
    batch_encode.encode(small, encoder="test-bow", items=tmp_path / "items.csv")
    with pytest.raises(DataError, match=r"item 'i400' of the catalogue has no vector \(100 items lack one\)"):
        batch_encode.load_vectors(small, ds.catalog)
    # items added since the folder was written (a service's, before its retrain) are encoded at fit
    grown = models.get("zero-shot", {"vectors": str(small), "cache": False}).fit(ds, progress=False)
    np.testing.assert_allclose(grown.item_vectors, own.item_vectors, rtol=0, atol=1e-6)
    frame.assign(item_id="other-" + frame.item_id).to_csv(tmp_path / "other.csv", index=False)
    batch_encode.encode(tmp_path / "other", encoder="test-bow", items=tmp_path / "other.csv")
    with pytest.raises(LLMRecError, match="hold none of this catalogue's 500 items"):
        models.get("zero-shot", {"vectors": str(tmp_path / "other")}).fit(ds, progress=False)


def test_cli_json_and_a_bad_folder(hive, tmp_path, capsys):
    code = cli.main(["batch", "encode", "--items", str(hive), "--encoder", "test-bow", "--out",
                     str(tmp_path / "v"), "--chunk-size", "200", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["items"] == 500 and res["chunks"] == 3 and res["items_per_second"] > 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(b"not parquet")
    code = cli.main(["batch", "encode", "--items", str(tmp_path / "bad"), "--encoder", "test-bow", "--out",
                     str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bad: not a readable Parquet data set" in err


def test_without_ray_or_a_cluster_one_line(hive, tmp_path, capsys, monkeypatch):
    args = ["batch", "encode", "--items", str(hive), "--encoder", "test-bow", "--out", str(tmp_path / "o"),
            "--engine", "ray"]
    code = cli.main([*args, "--address", "127.0.0.1:9"])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("llmrec:")]
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("llmrec: error: cannot reach a Ray cluster at 127.0.0.1:9 (")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = cli.main(args)
    assert code == 2 and capsys.readouterr().err == ("llmrec: error: --engine ray needs the 'ray' extra: "
                                                     "pip install 'llmrec[ray]'\n")


def test_a_partitioned_parquet_log_loads_as_its_csv(ds, tmp_path):
    inter = ds.interactions
    frame = pd.DataFrame({"user_id": ds.users.ids(inter.user).astype(str),
                          "item_id": ds.catalog.ids.ids(inter.item).astype(str), "timestamp": inter.timestamp})
    frame.to_csv(tmp_path / "log.csv", index=False)
    table = pa.Table.from_pandas(frame.assign(bucket=inter.user % 4), preserve_index=False)
    pads.write_dataset(table, tmp_path / "log", format="parquet", partitioning=["bucket"],
                       partitioning_flavor="hive", max_rows_per_group=500)
    assert len(list((tmp_path / "log").glob("bucket=*/*.parquet"))) == 4
    ref = data.load_files(tmp_path / "log.csv")
    for source in (tmp_path / "log", f"file://{tmp_path / 'log'}"):
        got = data.load_files(source, chunk_rows=333)  # chunks cut across files and row groups
        # the folder's rows come file by file: the same users and events, grouped by partition
        assert sorted(got.users.ids()) == sorted(ref.users.ids())
        key = lambda d: sorted(zip(d.users.ids(d.interactions.user), d.catalog.ids.ids(d.interactions.item),  # noqa: E731
                                   d.interactions.timestamp))
        assert key(got) == key(ref)
        uid = "u5"  # each user's history in time order, as from the CSV
        h_ref = ref.catalog.ids.ids(ref.histories()[ref.users.index(uid)])
        assert list(got.catalog.ids.ids(got.histories()[got.users.index(uid)])) == list(h_ref)


# -- the Ray engine: the same vectors as the local one --------------------------------------------------
@pytest.mark.slow
def test_ray_writes_the_local_engines_vectors(ds, hive, tmp_path, local_ray):
    for name, source in (("uri", {"items": f"file://{hive}"}), ("named", {"dataset": NAME})):
        local = batch_encode.encode(tmp_path / f"{name}-local", encoder="test-bow", chunk_size=64, **source)
        ray = batch_encode.encode(tmp_path / f"{name}-ray", encoder="test-bow", chunk_size=64, engine="ray",
                                  workers=2, **source)
        assert ray["workers"] == 2 and ray["chunks_computed"] == local["chunks_computed"] == 8, name
        a, b = pd.read_parquet(tmp_path / f"{name}-local"), pd.read_parquet(tmp_path / f"{name}-ray")
        assert a.item_id.tolist() == b.item_id.tolist(), name
        np.testing.assert_allclose(np.stack(a.vector.to_numpy()), np.stack(b.vector.to_numpy()), rtol=0,
                                   atol=1e-5, err_msg=name)
    out = tmp_path / "uri-ray"  # Ray resumes too: only the missing chunk is recomputed
    (out / "part-00005.parquet").unlink()
    res = batch_encode.encode(out, encoder="test-bow", items=f"file://{hive}", chunk_size=64, engine="ray")
    assert res["chunks_computed"] == 1 and res["workers"] == 1
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "uri-local"))
