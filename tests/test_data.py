"""Ingestion: formats, column mapping, id vocabularies, and errors that name file, line and field."""

import json

import numpy as np
import pandas as pd
import pytest

from llmrec import clean, data, synthetic
from llmrec.errors import DataError, UnknownNameError


def _write_log(tmp_path, fmt):
    df = pd.DataFrame({"uid": ["a", "a", "b", "b", "b"], "iid": [10, 11, 10, 12, 11],
                       "ts": [1, 2, 1, 5, 3], "stars": [4, 5, 3, 2, 5]})
    p = tmp_path / f"log.{fmt}"
    if fmt == "csv":
        df.to_csv(p, index=False)
    elif fmt == "tsv":
        df.to_csv(p, index=False, sep="\t")
    elif fmt == "jsonl":
        p.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")) + "\n")
    else:
        df.to_parquet(p)
    return p


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_every_format_with_column_mapping(tmp_path, fmt):
    p = _write_log(tmp_path, fmt)
    ds = data.load_files(p, interaction_columns={"user_id": "uid", "item_id": "iid",
                                                 "timestamp": "ts", "rating": "stars"})
    assert ds.n_users == 2 and ds.n_items == 3 and len(ds.interactions) == 5
    # ids are external strings; histories come back in time order
    hist = ds.histories()[ds.users.index("b")]
    assert list(ds.catalog.ids.ids(hist)) == ["10", "11", "12"]
    assert ds.interactions.value.dtype == np.float32


def test_id_map_round_trip_and_unknown():
    m = data.IdMap(["x", 5, "y"], kind="user")
    assert m.index(5) == 1 and m.index("5") == 1
    assert list(m.ids([2, 0])) == ["y", "x"]
    with pytest.raises(UnknownNameError, match="unknown user 'z'; valid choices: 5, x, y"):
        m.index("z")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_files(tmp_path / "nope.csv")


def test_empty_file(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    with pytest.raises(DataError, match=r"e\.csv: the file is empty"):
        data.load_files(p)


def test_missing_column_names_it(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("user,item_id\n1,2\n")
    with pytest.raises(DataError, match=r"l\.csv, field 'user_id': no 'user_id' column"):
        data.load_files(p)


def test_misnamed_column_in_mapping(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(DataError, match="field 'movieId'"):
        data.load_files(p, interaction_columns={"item_id": "movieId"})


def test_non_numeric_timestamp_names_line_and_field(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("user_id,item_id,timestamp\n1,2,100\n1,3,yesterday\n")
    with pytest.raises(DataError, match=r"l\.csv, line 3, field 'timestamp': expected a number or an "
                                        r"ISO-8601 date, got 'yesterday'"):
        data.load_files(p)


def test_iso_dates_are_accepted(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("user_id,item_id,timestamp\n1,2,2024-01-01T00:00:00Z\n1,3,100\n")
    ds = data.load_files(p)
    assert ds.interactions.timestamp.tolist() == [1704067200.0, 100.0]


def test_line_that_does_not_parse(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("user_id,item_id\n1,2\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"l\.csv, line 3: the line does not parse"):
        data.load_files(p)


def test_bad_jsonl_line(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text('{"user_id": 1, "item_id": 2}\n{"user_id": 1, \n')
    with pytest.raises(DataError, match=r"l\.jsonl, line 2: not valid JSON"):
        data.load_files(p)


def test_unknown_item_in_log_against_catalogue(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n1,A\n2,B\n")
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id\nu,1\nu,9\n")
    with pytest.raises(DataError, match=r"log\.csv, line 3, field 'item_id': item '9' is not in the"):
        data.load_files(log, items)
    ds = data.load_files(log, items, unknown_items="drop")
    assert len(ds.interactions) == 1
    ds = data.load_files(log, items, unknown_items="add")
    assert ds.n_items == 3


def test_duplicate_item_ids_in_catalogue(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n1,A\n1,B\n")
    with pytest.raises(DataError, match=r"items\.csv, line 3, field 'item_id': duplicate item id '1'"):
        data.load_catalog(items)


def test_catalog_upsert_keeps_indices():
    cat = data.Catalog.from_frame(pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]}))
    new, idx = cat.upsert(pd.DataFrame({"item_id": ["b", "c"], "title": ["B2", "C"]}))
    assert idx.tolist() == [1, 2]
    assert new.titles() == ["A", "B2", "C"] and cat.titles() == ["A", "B"]


def test_cleaning_reports_what_it_removed():
    ds = synthetic.make(n_users=50, n_items=30, seed=1)
    dd, rep = clean.drop_duplicates(ds)
    pairs = dd.interactions.user * 1000 + dd.interactions.item
    assert len(np.unique(pairs)) == len(pairs)
    assert rep.removed == len(ds.interactions) - len(dd.interactions) > 0
    kc, rep = clean.k_core(dd, 5)
    assert np.bincount(kc.interactions.user).max() >= 5
    u = np.bincount(kc.interactions.user)
    i = np.bincount(kc.interactions.item)
    assert u[u > 0].min() >= 5 and i[i > 0].min() >= 5
    assert "k_core" in str(rep)


def test_min_rating(tmp_path):
    p = _write_log(tmp_path, "csv")
    ds = data.load_files(p, interaction_columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts",
                                                 "rating": "stars"})
    out, rep = clean.min_rating(ds, 4)
    assert len(out.interactions) == 3 and rep.removed == 2


def test_synthetic_is_deterministic_and_sized():
    a = synthetic.make(n_users=40, n_items=25, seed=3)
    b = synthetic.make(n_users=40, n_items=25, seed=3)
    c = synthetic.make(n_users=40, n_items=25, seed=4)
    np.testing.assert_array_equal(a.interactions.item, b.interactions.item)
    assert not np.array_equal(a.interactions.item[:50], c.interactions.item[:50])
    assert a.n_users == 40 and a.n_items == 25
    assert {"title", "description", "tags", "genres"} <= set(a.catalog.frame.columns)
