"""Data options on the command line: cleaning (--duplicates, --min-rating, --k-core) on every command
that loads data, memory per interaction and the leave-one-out order in `data stats`."""

import json

import pytest

from llmrec.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _rating(u, t):
    return 1 + (u + t) % 5


@pytest.fixture()
def log(tmp_path):
    """10 users x 8 ratings (1..5) over 30 items, every user's first item repeated once at the end."""
    rows = ["user_id,item_id,timestamp,rating"]
    for u in range(10):
        for t in range(8):
            rows.append(f"u{u},i{(3 * u + t) % 30},{t},{_rating(u, t)}")
        rows.append(f"u{u},i{3 * u},100,5")
    p = tmp_path / "log.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def _stats(capsys, *argv):
    code, out, err = run(capsys, "data", "stats", *argv, "--json")
    assert code == 0, err
    return json.loads(out), err


def test_stats_report_memory_and_order(capsys, log, tmp_path):
    s, _ = _stats(capsys, "--interactions", str(log))
    assert s["interactions"] == 90 and s["memory_interactions_bytes"] == 90 * 28
    assert s["memory_per_interaction_bytes"] == 28.0
    assert s["memory_total_bytes"] == s["memory_interactions_bytes"] + s["memory_catalog_bytes"] > 0
    assert s["leave_one_out_order"].startswith("by timestamp")
    untimed = tmp_path / "untimed.csv"
    untimed.write_text("user_id,item_id\n" + "".join(f"u{u},i{i}\n" for u in range(4) for i in range(5)))
    s, _ = _stats(capsys, "--interactions", str(untimed))
    assert "seeded random order per user" in s["leave_one_out_order"]
    code, out, _ = run(capsys, "evaluate", "--interactions", str(untimed), "--model", "popular", "-k", "3")
    assert code == 0 and "no timestamps, so each user's interactions are put in a seeded random order" in out


def test_duplicates_keep_drop_error(capsys, log):
    s, _ = _stats(capsys, "--interactions", str(log))
    assert s["interactions"] == 90 and "cleaning" not in s
    s, err = _stats(capsys, "--interactions", str(log), "--duplicates", "drop")
    assert s["interactions"] == 80
    assert "drop_duplicates: removed 10 interactions, 80 remain" in err and s["cleaning"][0] in err
    code, out, err = run(capsys, "data", "stats", "--interactions", str(log), "--duplicates", "error")
    assert code == 2 and out == ""
    assert "log.csv, line 10: 10 duplicate interactions" in err and "user 'u0', item 'i0'" in err
    assert "--duplicates drop" in err


def test_min_rating_and_k_core(capsys, log):
    low = sum(_rating(u, t) < 3 for u in range(10) for t in range(8))
    s, err = _stats(capsys, "--interactions", str(log), "--min-rating", "3")
    assert 0 < low < 80 and s["interactions"] == 90 - low
    assert f"min_rating: removed {low} interactions, {90 - low} remain (>= 3.0)" in err
    s, err = _stats(capsys, "--interactions", str(log), "--duplicates", "drop", "--k-core", "2")
    assert [c.split(":")[0] for c in s["cleaning"]] == ["drop_duplicates", "k_core"]


def test_k_core_removes_thin_users_and_items(capsys, tmp_path):
    p = tmp_path / "log.csv"
    rows = [f"u{u},i{i},{i}" for u in range(5) for i in range(5)] + ["lone,i0,9", "u0,rare,9"]
    p.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    s, err = _stats(capsys, "--interactions", str(p), "--k-core", "3")
    assert s["interactions"] == 25 and s["users"] == 5 and s["items_with_interactions"] == 5
    assert "k_core: removed 2 interactions, 25 remain (k=3" in err


@pytest.mark.parametrize("command", ["evaluate", "train", "recommend"])
def test_cleaning_options_on_every_data_command(capsys, log, tmp_path, command):
    argv = [command, "--interactions", str(log), "--model", "popular", "--min-rating", "3",
            "--duplicates", "drop", "--json"]
    if command == "train":
        argv += ["--out", str(tmp_path / "ck")]
    if command == "recommend":
        argv += ["--user", "u1"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "min_rating: removed" in err and "drop_duplicates: removed 10" in err
    if command == "evaluate":
        assert json.loads(out)["cleaning"][1].startswith("min_rating: removed")
    if command == "train":
        assert any("min_rating: removed" in json.dumps(json.loads(f.read_text()))
                   for f in (tmp_path / "ck").glob("*.json"))


def test_bad_cleaning_options_exit_2(capsys, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id\nu,i\nu,j\nu,k\n")
    code, _, err = run(capsys, "data", "stats", "--interactions", str(p), "--min-rating", "1")
    assert code == 2 and "min rating 1: the data has no rating or value column" in err
    code, _, err = run(capsys, "data", "stats", "--interactions", str(p), "--k-core", "0")
    assert code == 2 and "k-core needs k >= 1" in err


@pytest.mark.slow
def test_book_crossing_min_rating_drops_the_implicit_zeros(capsys):
    s, err = _stats(capsys, "--dataset", "book-crossing", "--min-rating", "1")
    assert s["interactions"] == 1_149_780 - 716_109
    assert "min_rating: removed 716,109 interactions, 433,671 remain" in err
    assert "seeded random order per user" in s["leave_one_out_order"]


def test_checkpoint_is_evaluated_on_data_cleaned_as_for_training(capsys, tmp_path):
    ck = tmp_path / "ck"
    code, out, err = run(capsys, "train", "--dataset", "synthetic-60-40-1", "--model", "popular", "--k-core", "8",
                         "--duplicates", "drop", "--out", str(ck), "--json")
    assert code == 0, err
    trained = json.loads(out)
    code, out, err = run(capsys, "evaluate", "--model-dir", str(ck), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [c.split(":")[0] for c in res["cleaning"]] == ["drop_duplicates", "k_core"]
    assert res["metrics"]["HR@10"] == trained["metrics"]["HR@10"]
