"""Model configs are checked when built: every out-of-range value and cross-field conflict is one
ConfigError naming the key, raised before any data loads (by the library and by ``llmrec train``); old
key names still load (from --set and from checkpoints) with a deprecation warning."""

import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from llmrec import cli, models
from llmrec.errors import ConfigError
from llmrec.models.sasrec import SASRecConfig

# (model, key, a value out of range or of the wrong kind)
BAD = [
    ("sasrec", "embedding_size", 0), ("sasrec", "layers", 0), ("sasrec", "heads", 0), ("sasrec", "ff_mult", 0),
    ("sasrec", "max_history", 0), ("sasrec", "windows", -1), ("sasrec", "dropout", 1.0),
    ("sasrec", "epochs", -1), ("sasrec", "temperature", 0.0), ("sasrec", "learning_rate", 0.0),
    ("sasrec", "warmup_epochs", -1), ("sasrec", "weight_decay", -0.1), ("sasrec", "batch_size", 0),
    ("sasrec", "patience", 0), ("sasrec", "eval_every", 0), ("sasrec", "eval_users", -1),
    ("sasrec", "max_minutes", -1.0), ("sasrec", "threads", -1), ("sasrec", "loss_chunk", -1),
    ("sasrec", "negatives", -1), ("sasrec", "block", "lstm"), ("sasrec", "similarity", "l1"),
    ("textseq", "embedding_size", 0), ("textseq", "negatives", -5),
    ("semantic-ids", "levels", 0), ("semantic-ids", "codebook_size", 0), ("semantic-ids", "cf_dim", 0),
    ("semantic-ids", "heads", 0), ("semantic-ids", "dropout", -0.1), ("semantic-ids", "max_history", 0),
    ("semantic-ids", "beam_size", 0), ("semantic-ids", "top_k", 0), ("semantic-ids", "kmeans_iters", 0),
    ("semantic-ids", "invalid_sample", -1), ("semantic-ids", "eval_users", -1),
    ("semantic-ids", "learning_rate", -1.0), ("semantic-ids", "decoding", "greedy"),
    ("titlegen", "max_history", -1), ("titlegen", "beam_size", 0), ("titlegen", "top_k", 0),
    ("titlegen", "steps", -1), ("titlegen", "lora_rank", 0), ("titlegen", "max_prompt_tokens", 0),
    ("titlegen", "finetune", "qlora"),
    ("tuned-encoder", "steps_per_epoch", 0), ("tuned-encoder", "temperature", 0.0),
    ("tuned-encoder", "history_items", 0), ("tuned-encoder", "eval_users", -2),
    ("itemknn", "neighbors", -1), ("itemknn", "shrinkage", -0.5), ("itemknn", "threads", -1),
    ("zero-shot", "recency", 0.0), ("zero-shot", "recency", 1.5), ("zero-shot", "profile_weight", 2.0),
    ("zero-shot", "max_history", 0), ("zero-shot", "recall", 0.0), ("zero-shot", "tune_queries", -1),
    ("zero-shot", "index", "annoy"),
]
# (model, config, the key named, message): rules across keys
CROSS = [
    ("sasrec", {"embedding_size": 10, "heads": 3}, "heads", "embedding_size 10 must be divisible by heads 3"),
    ("textseq", {"embedding_size": 32, "heads": 5}, "heads", "divisible by heads 5"),
    ("semantic-ids", {"embedding_size": 30, "heads": 4}, "heads", "divisible by heads 4"),
    ("titlegen", {"prompt": "What next?"}, "prompt", "no {history} slot"),
]


@pytest.mark.parametrize(("name", "key", "value"), BAD)
def test_each_bad_value_is_refused_at_construction_naming_the_key(name, key, value):
    with pytest.raises(ConfigError, match=rf"\.{key}: "):
        models.get(name, {key: value})


@pytest.mark.parametrize(("name", "cfg", "key", "message"), CROSS)
def test_cross_field_rules_are_refused_at_construction(name, cfg, key, message):
    with pytest.raises(ConfigError, match=rf"\.{key}: .*{message.replace('{', '.').replace('}', '.')}"):
        models.get(name, cfg)


def test_a_config_built_directly_is_checked_too():
    with pytest.raises(ConfigError, match="SASRecConfig.dropout: must be < 1.0"):
        SASRecConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="heads"):
        replace(SASRecConfig(), embedding_size=10, heads=3)
    lr = SASRecConfig(learning_rate=1).learning_rate
    assert lr == 1.0 and isinstance(lr, float)


@pytest.mark.parametrize("bad", ["embedding_size=0", "heads=3", "dropout=2"])
def test_train_refuses_a_bad_config_before_loading_data(bad, monkeypatch, tmp_path, capsys):
    def no_data(*_a, **_k):
        raise AssertionError("data loaded before the config was checked")
    monkeypatch.setattr(cli, "load_data", no_data)
    code = cli.main(["train", "--dataset", "ml-100k", "--model", "sasrec", "--out", str(tmp_path / "m"),
                     "--set", bad, "--set", "embedding_size=16" if bad == "heads=3" else "epochs=1"])
    assert code == 2
    assert bad.split("=")[0] in capsys.readouterr().err


def test_old_key_names_load_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="llmrec"):
        m = models.get("sasrec", {"max_length": 30, "num_blocks": 3, "num_heads": 2, "embedding_size": 16})
    assert (m.config.max_history, m.config.layers, m.config.heads) == (30, 3, 2)
    assert "'max_length' is deprecated" in caplog.text and "max_history=30" in caplog.text
    with caplog.at_level(logging.WARNING, logger="llmrec"):
        assert models.get("semantic-ids", {"valid_users": 50}).config.eval_users == 50
        assert models.get("semantic-ids", {"valid_users": 0}).config.validate is False
    assert "'valid_users' is deprecated" in caplog.text
    with pytest.raises(ConfigError, match="old name of 'max_history'"):
        models.get("sasrec", {"max_length": 30, "max_history": 20})


def test_a_checkpoint_written_with_old_key_names_loads(tiny, tiny_split, tmp_path, caplog):
    m = models.get("sasrec", {"embedding_size": 16, "max_history": 10, "layers": 1, "heads": 2, "epochs": 1,
                              "threads": 1}).fit(tiny, tiny_split, progress=False)
    m.save(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg = meta["config"]
    cfg["max_length"], cfg["num_blocks"], cfg["num_heads"] = cfg.pop("max_history"), cfg.pop("layers"), cfg.pop("heads")
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="llmrec"):
        back = models.load_model(tmp_path / "ck")
    assert "'num_blocks' is deprecated" in caplog.text
    hist = [np.array([0, 1, 2]), np.array([5])]
    np.testing.assert_array_equal(m.score_histories(hist), back.score_histories(hist))


def test_training_states_keep_the_key_names_they_were_written_with(tiny):
    """The resume fingerprint names the renamed keys as before, so older training states still resume."""
    fp = models.get("sasrec", {"max_history": 20})._fingerprint(tiny)
    assert fp["max_length"] == 20 and "num_blocks" in fp and "num_heads" in fp and "max_history" not in fp
