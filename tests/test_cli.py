"""The command line: JSON shapes, and bad input -> one clear line on stderr, exit 2, no traceback."""

import json

import pytest

from llmrec.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def files(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,genres\n" + "".join(f"i{i},Film {i},{'Drama' if i % 2 else 'Comedy'}\n"
                                                        for i in range(20)))
    rows = ["user_id,item_id,timestamp"]
    for u in range(10):
        for t in range(8):
            rows.append(f"u{u},i{(u + t) % 20},{t}")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    return items, log


def test_evaluate_json(capsys, files):
    items, log = files
    code, out, _ = run(capsys, "evaluate", "--interactions", str(log), "--items", str(items),
                       "--model", "itemknn", "-k", "5,10", "--json")
    assert code == 0
    res = json.loads(out)
    assert {"dataset", "model", "protocol", "metrics"} <= set(res)
    assert {"HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR@10", "Coverage@10"} <= set(res["metrics"])
    assert "leave-one-out" in res["protocol"]


def test_recommend_json_shape(capsys, files):
    items, log = files
    code, out, _ = run(capsys, "recommend", "--interactions", str(log), "--items", str(items),
                       "--model", "itemknn", "--user", "u3", "-k", "4", "--json", "--explain")
    assert code == 0
    res = json.loads(out)
    assert len(res["items"]) == 4
    assert {"item_id", "score", "title", "explanation"} <= set(res["items"][0])
    scores = [x["score"] for x in res["items"]]
    assert scores == sorted(scores, reverse=True)


def test_stats(capsys, files):
    items, log = files
    code, out, _ = run(capsys, "data", "stats", "--interactions", str(log), "--items", str(items), "--json")
    assert code == 0 and json.loads(out)["interactions"] == 80


def test_train_then_evaluate_checkpoint(capsys, files, tmp_path):
    items, log = files
    ck = tmp_path / "ck"
    code, out, _ = run(capsys, "train", "--interactions", str(log), "--items", str(items),
                       "--model", "itemknn", "--out", str(ck), "--json")
    assert code == 0 and (ck / "state.safetensors").exists() and (ck / "README.md").exists()
    code, out, _ = run(capsys, "evaluate", "--model-dir", str(ck), "--interactions", str(log),
                       "--items", str(items), "--json")
    assert code == 0 and json.loads(out)["metrics"] == json.loads(
        (ck / "config.json").read_text())["card"]["test_metrics"]


def test_checkpoint_trained_on_your_files_evaluates_with_no_data_options(capsys, files, tmp_path, monkeypatch):
    """The README's `llmrec evaluate --model-dir DIR`: the card names the files, not a data set called
    after the log file (which failed with "unknown data set 'log'"); any working directory."""
    items, log = files
    ck = tmp_path / "ck"
    assert run(capsys, "train", "--interactions", str(log), "--items", str(items), "--model", "itemknn",
               "--out", str(ck), "--duplicates", "drop", "--json")[0] == 0
    monkeypatch.chdir(tmp_path.parent)
    code, out, err = run(capsys, "evaluate", "--model-dir", str(ck), "--json")
    assert code == 0, err
    card = json.loads((ck / "config.json").read_text())["card"]
    assert card["data"]["interactions"] == str(log.resolve())
    assert json.loads(out)["metrics"] == card["test_metrics"]


def test_library_errors_are_one_line_not_a_traceback(capsys):
    code, out, err = run(capsys, "data", "stats", "synthetic-0-5")
    assert code == 2 and "at least one user and one item" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "--dataset", "ml-9m"], "unknown data set 'ml-9m'; valid choices: book-crossing, ml-100k"),
    (["evaluate", "--interactions", "/nonexistent.csv"], "/nonexistent.csv: no such file"),
    (["evaluate", "--dataset", "synthetic-30-20", "--model", "nope"], "unknown model 'nope'; valid choices"),
    (["evaluate", "--dataset", "synthetic-30-20", "--set", "neighbors=x"],
     "ItemKNNConfig.neighbors: expected an integer, got 'x'"),
    (["evaluate", "--dataset", "synthetic-30-20", "--set", "neighbours=5"],
     "ItemKNNConfig: unknown key(s) 'neighbours'; valid keys: neighbors, shrinkage"),
    (["evaluate", "--dataset", "synthetic-30-20", "-k", "ten"], "-k expects comma-separated integers"),
    (["recommend", "--dataset", "synthetic-30-20", "--user", "nobody"], "unknown user 'nobody'"),
    (["evaluate"], "no data: pass --dataset NAME or --interactions FILE"),
    (["evaluate", "--model-dir", "/nonexistent"], "not an llmrec checkpoint"),
])
def test_bad_input_exit_2_with_clear_message(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and out == ""


def test_bad_file_names_line_and_field(capsys, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,timestamp\nu,i,1\nu,j,soon\n")
    code, _, err = run(capsys, "evaluate", "--interactions", str(p))
    assert code == 2
    assert "log.csv, line 3, field 'timestamp'" in err


def test_failed_train_writes_nothing(capsys, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id\nu,i\n")
    ck = tmp_path / "ck"
    code, _, err = run(capsys, "train", "--interactions", str(p), "--out", str(ck))
    assert code == 2 and "too small to split" in err
    assert not ck.exists() and list(tmp_path.iterdir()) == [p]
