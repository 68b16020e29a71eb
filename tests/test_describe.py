"""The LM writes item descriptions and keywords: parsing, greedy batched generation equal to one item at a
time, the on-disk cache (a second run generates nothing, a stopped run resumes), the catalogue written
back, and the command line. A tiny randomly initialised Llama with SmolLM2's tokenizer stands in for the
real model; one slow test runs SmolLM2-135M-Instruct itself."""

import json

import pandas as pd
import pytest

from llmrec import describe
from llmrec.cli import main
from llmrec.data import Catalog
from llmrec.errors import LLMRecError


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmrec.lm import resolve
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-lm")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def catalogue(n: int = 7) -> Catalog:
    return Catalog.from_frame(pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n)], "title": [f"Film number {i}" + " long" * i for i in range(n)],
        "year": [str(1990 + i) for i in range(n)], "genres": ["Drama" if i % 2 else "Comedy" for i in range(n)]}))


def test_parse_answer_keeps_what_a_cut_off_answer_has():
    d = describe.parse_answer(' "A quiet drama about two sisters."\nKeywords: x', " Drama, Sisters, drama, , Family.")
    assert d.description == "A quiet drama about two sisters." and d.keywords == ["drama", "sisters", "family"]
    assert describe.parse_answer(" A film cut off in the mid", "").keywords == []
    assert describe.parse_answer("", " b, c, d, e, f, g, h").keywords == ["b", "c", "d", "e", "f"]
    assert describe.parse_answer("x", " Ed Wood, 1994, the, comedy, 19").keywords == ["ed wood", "comedy"]


def test_item_fields_leave_empty_ones_out():
    assert describe.item_fields({"title": "Up", "year": None, "genres": "Animation", "item_id": "1"}) == \
        "Title: Up\nGenres: Animation"


def test_batched_greedy_equals_one_at_a_time(tiny_lm, cache):
    d = describe.Describer(tiny_lm, max_new_tokens=6, batch_size=4, threads=1)
    fields = [describe.item_fields(r) for r in catalogue().frame.to_dict("records")]
    batched = d.describe_batch(fields[:4])  # prompts of different lengths: left padding matters
    alone = [d.describe_batch([f])[0] for f in fields[:4]]
    assert batched == alone
    assert d.describe_batch(fields[:4]) == batched  # greedy: deterministic


def test_cache_second_run_generates_nothing_and_a_stopped_run_resumes(tiny_lm, cache, monkeypatch):
    d = describe.Describer(tiny_lm, max_new_tokens=4, batch_size=2, threads=1)
    fields = [describe.item_fields(r) for r in catalogue().frame.to_dict("records")]
    calls = []
    real = d.describe_batch

    def counting(batch):
        calls.append(len(batch))
        return real(batch)
    monkeypatch.setattr(d, "describe_batch", counting)

    def stop(done, total):
        if done == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        d.describe(fields, progress=False, on_batch=stop)
    assert calls == [2, 2]
    with open(d.cache_path, "a") as f:  # a line cut off by a kill
        f.write('{"key": "abc", "descr')
    first = d.describe(fields, progress=False)
    assert calls == [2, 2, 2, 1]  # only the three items not yet cached
    again = describe.Describer(tiny_lm, max_new_tokens=4, batch_size=2, threads=1)
    monkeypatch.setattr(again, "describe_batch", counting)
    assert again.describe(fields, progress=False) == first and calls == [2, 2, 2, 1]
    other = describe.Describer(tiny_lm, max_new_tokens=5, batch_size=2, threads=1)  # another setting: new key
    assert other.key(fields[0]) != d.key(fields[0])


def test_catalogue_written_back_only_where_missing(tiny_lm, cache):
    cat = catalogue(4)
    frame = cat.frame.copy()
    frame["description"] = [None, "Kept as it was.", None, ""]
    cat = Catalog.from_frame(frame)
    d = describe.Describer(tiny_lm, max_new_tokens=4, threads=1)
    out, n = describe.describe_catalog(cat, d, progress=False)
    assert n == 3 and out.frame["description"][1] == "Kept as it was."
    assert "tags" in out.frame.columns and list(out.frame["item_id"]) == list(cat.frame["item_id"])
    _, n_all = describe.describe_catalog(cat, d, only_missing=False, progress=False)
    assert n_all == 4
    blank = Catalog.from_frame(pd.DataFrame({"item_id": ["x"], "title": [""]}))
    with pytest.raises(LLMRecError, match="item 'x' has none of the fields"):
        describe.describe_catalog(blank, d, progress=False)


def test_cli_describe(tiny_lm, cache, tmp_path, capsys):
    items = tmp_path / "items.csv"
    catalogue(3).frame.to_csv(items, index=False)
    out = tmp_path / "described.jsonl"
    argv = ["describe", "--items", str(items), "--lm", tiny_lm, "--max-new-tokens", "4", "--threads", "1"]
    assert main(argv + ["--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["described"] == 3 and res["items"] == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["item_id"] for r in rows] == ["i0", "i1", "i2"] and all("description" in r for r in rows)
    assert main(argv + ["--out", str(tmp_path / "x.xlsx")]) == 2
    assert "unknown catalogue format" in capsys.readouterr().err
    assert main(["describe", "--out", str(out)]) == 2
    assert "--items FILE or --dataset NAME" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_writes_a_sentence_and_keywords(cache):
    d = describe.Describer(max_new_tokens=32, threads=1)
    got = d.describe(["Title: Toy Story\nYear: 1995\nGenres: Animation, Children's, Comedy",
                      "Title: Richard III\nYear: 1995\nGenres: Drama, War"], progress=False)
    assert all(len(g.description.split()) >= 4 for g in got), got
    assert any(g.keywords for g in got), got
    assert "richard" in got[1].description.lower() or "king" in got[1].description.lower(), got
