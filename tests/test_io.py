"""Reading logs in chunks, and bad input located by file, line and byte, whatever the file's size."""

import json

import numpy as np
import pandas as pd
import pytest

from llmrec import data, io
from llmrec.cli import main
from llmrec.errors import DataError, UnknownNameError


def _log(n_users=40, n_rows=500, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users, n_rows)],
                         "item_id": [f"i{i}" for i in rng.zipf(1.3, n_rows) % 97],
                         "timestamp": rng.integers(0, 10**6, n_rows), "rating": rng.integers(1, 6, n_rows)})


def _write(df, p):
    if p.suffix == ".csv":
        df.to_csv(p, index=False)
    elif p.suffix == ".tsv":
        df.to_csv(p, index=False, sep="\t")
    elif p.suffix == ".jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    else:
        df.to_parquet(p, row_group_size=64)
    return p


def _same(a, b):
    for x, y in ((a.interactions.user, b.interactions.user), (a.interactions.item, b.interactions.item),
                 (a.interactions.timestamp, b.interactions.timestamp),
                 (a.interactions.value, b.interactions.value)):
        np.testing.assert_array_equal(x, y)
    assert list(a.users.ids()) == list(b.users.ids())
    assert list(a.catalog.ids.ids()) == list(b.catalog.ids.ids())


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_chunked_load_equals_one_chunk(tmp_path, fmt):
    df = _log()
    p = _write(df, tmp_path / f"log.{fmt}")
    whole = data.build_dataset("x", df.astype(str))
    for rows in (7, 64, 10**6):
        _same(data.load_files(p, chunk_rows=rows), whole)


@pytest.mark.parametrize("unknown", ["drop", "add"])
def test_unknown_items_across_chunks(tmp_path, unknown):
    df = _log()
    p = _write(df, tmp_path / "log.csv")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f"i{i},T{i}\n" for i in range(0, 97, 2)))
    one = data.load_files(p, items, unknown_items=unknown, chunk_rows=10**6)
    many = data.load_files(p, items, unknown_items=unknown, chunk_rows=13)
    _same(one, many)
    known = df["item_id"].isin([f"i{i}" for i in range(0, 97, 2)])
    assert len(one.interactions) == (int(known.sum()) if unknown == "drop" else len(df))


def test_loaded_arrays_hold_no_python_object_per_row(tmp_path):
    p = _write(_log(n_rows=2000), tmp_path / "log.csv")
    inter = data.load_files(p, chunk_rows=100).interactions
    assert inter.user.dtype == inter.item.dtype == np.int64 and inter.event is None
    assert data.load_files(p).stats()["memory_per_interaction_bytes"] == 28.0  # 8 + 8 + 8 + 4


# -- bad input: each of these was wrong before (traceback, wrong line, no line, key not named) --------
def test_non_utf8_jsonl_names_file_and_line_and_exits_2(tmp_path, capsys):
    p = tmp_path / "log.jsonl"
    p.write_bytes(b'{"user_id": "a", "item_id": "x"}\n{"user_id": "b\xff", "item_id": "y"}\n')
    with pytest.raises(DataError, match=r"log\.jsonl, line 2: not UTF-8 text \(byte 0xff"):
        data.load_files(p)
    assert main(["data", "stats", "--interactions", str(p)]) == 2
    err = capsys.readouterr().err
    assert "log.jsonl, line 2: not UTF-8" in err and "Traceback" not in err


def test_non_utf8_csv_names_line_and_byte_offset(tmp_path):
    rows = ["user_id,item_id,timestamp"] + [f"user{n:05d},item{n % 311:04d},{n * 37}" for n in range(1, 699)]
    head = ("\n".join(rows) + "\n").encode()
    pad = 32_820 - len(head) - len("u,")  # the bad byte at file offset 32,820, on line 700
    assert pad > 0
    body = head + b"u," + b"i" * pad + b"\xe9t\xe9,1\n" + b"u,j,2\n" * 50
    p = tmp_path / "log.csv"
    p.write_bytes(body)
    assert body.index(b"\xe9") == 32_820 and body[:32_820].count(b"\n") + 1 == 700
    with pytest.raises(DataError) as e:
        data.load_files(p)
    assert e.value.line == 700
    assert "log.csv, line 700: not UTF-8 text (byte 0xe9 at byte offset 32,820 of the file)" in str(e.value)


@pytest.mark.parametrize("blank", ["\n", "\n\n", "   \n"])
def test_line_numbers_count_blank_lines(tmp_path, blank):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,timestamp\nu,i,1\n" + blank + "u,j,2\nu,k,soon\n")
    line = 4 + blank.count("\n")
    with pytest.raises(DataError, match=rf"log\.csv, line {line}, field 'timestamp'"):
        data.load_files(p)
    j = tmp_path / "log.jsonl"
    j.write_text('{"user_id": "u", "item_id": "i"}\n\n{"user_id": "u", "item_id": ""}\n')
    with pytest.raises(DataError, match=r"log\.jsonl, line 3, field 'item_id': empty id"):
        data.load_files(j)


def test_line_numbers_count_quoted_newlines_and_field_count(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text('user_id,item_id,timestamp\n"a\nb",i,1\n\nu,j,2,9\n')
    with pytest.raises(DataError, match=r"log\.csv, line 5: the line does not parse: expected 3 fields, saw 4"):
        data.load_files(p)
    items = tmp_path / "items.csv"
    items.write_text('item_id,title\n1,"two\nlines"\n\n1,B\n')
    with pytest.raises(DataError, match=r"items\.csv, line 5, field 'item_id': duplicate item id '1'"):
        data.load_catalog(items)


def test_misspelt_column_mapping_key_is_named(tmp_path, capsys):
    p = tmp_path / "log.csv"
    p.write_text("user,item\nu,i\n")
    with pytest.raises(UnknownNameError, match=r"unknown column-mapping key 'usr_id'; valid choices: event, "
                                               r"item_id, rating, timestamp, user_id, value"):
        data.load_files(p, interaction_columns={"usr_id": "user", "item_id": "item"})
    assert main(["data", "stats", "--interactions", str(p), "--columns", "usr_id=user,item_id=item"]) == 2
    assert "unknown column-mapping key 'usr_id'" in capsys.readouterr().err


def _big_csv(path, n_lines, bad_line):
    """A log of ``n_lines`` lines (header included) with a non-numeric timestamp on ``bad_line``."""
    n = np.arange(n_lines - 1)
    body = pd.DataFrame({"user_id": n % 50_000, "item_id": (n * 7919) % 200_000, "timestamp": n}).astype(str)
    body.iloc[bad_line - 2, 2] = "2020-13-45x"
    body.to_csv(path, index=False)


def _bad_line_near_the_end(tmp_path, capsys, n_lines):
    p = tmp_path / "big.csv"
    bad = n_lines - 7
    _big_csv(p, n_lines, bad)
    ck = tmp_path / "ck"
    code = main(["train", "--interactions", str(p), "--model", "popular", "--out", str(ck)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"big.csv, line {bad}," in err and "field 'timestamp'" in err
    assert not ck.exists() and sorted(x.name for x in tmp_path.iterdir()) == ["big.csv"]


def test_bad_line_near_the_end_of_a_million_lines(tmp_path, capsys):
    _bad_line_near_the_end(tmp_path, capsys, 1_000_000)


@pytest.mark.slow
def test_bad_line_near_the_end_of_ten_million_lines(tmp_path, capsys):
    _bad_line_near_the_end(tmp_path, capsys, 10_000_000)


def test_io_line_of_row_and_first_bad_utf8(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(b"a,b\n1,2\n\n3,4\n5,\xff\n")
    assert [io.line_of_row(p, r) for r in range(3)] == [2, 4, 5]
    assert io.first_bad_utf8(p, block_size=3) == (5, 15, 0xFF)


def test_event_column_across_chunks(tmp_path):
    df = _log(n_rows=300)
    df["event"] = np.where(np.arange(300) % 3 == 0, "click", "buy")
    p = _write(df, tmp_path / "log.csv")
    many, one = data.load_files(p, chunk_rows=17), data.load_files(p)
    _same(many, one)
    assert list(many.interactions.event) == list(df["event"])
    assert many.stats()["memory_per_interaction_bytes"] == 36.0  # an 8-byte pointer to a shared string


def test_jsonl_keys_that_appear_in_later_chunks(tmp_path):
    p = tmp_path / "log.jsonl"
    rows = [{"user_id": "a", "item_id": "x"}] * 3 + [{"user_id": "b", "item_id": "y", "timestamp": 5, "rating": 4}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = data.load_files(p, chunk_rows=2)
    assert np.isnan(ds.interactions.timestamp[:3]).all() and ds.interactions.timestamp[3] == 5
    assert ds.interactions.value[3] == 4 and np.isnan(ds.interactions.value[0])
