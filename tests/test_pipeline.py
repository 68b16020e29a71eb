"""One way from a request to a model: the benchmark runner, the ensemble and `llmrec train` fit, describe and
save through ``pipeline.fit_card_save``; data records where it came from; a checkpoint is its model."""

import importlib.util
from pathlib import Path

import pytest

from llmrec import models, pipeline
from llmrec.errors import LLMRecError


def _benchmark_runner():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("benchmark_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_and_ensemble_train_through_the_one_path(tiny, tiny_split, tmp_path, monkeypatch):
    calls = []
    real = pipeline.fit_card_save
    monkeypatch.setattr(pipeline, "fit_card_save", lambda m, *a, **kw: calls.append(m.name) or real(m, *a, **kw))
    r = _benchmark_runner().run_one(tiny, tiny_split, "popular", {}, checkpoint_dir=tmp_path)
    assert calls == ["popular"]
    back = models.load_model(tmp_path / f"{tiny.name}__popular")  # the runner saves what it trained
    assert back.card["fit_seconds"] == r["fit_seconds"] and back.card["dataset"] == tiny.name
    models.get("ensemble", members=["popular", "itemknn"], fusion="zscore").fit(tiny, tiny_split, progress=False)
    assert calls[1:] == ["popular", "itemknn"]


def test_data_records_its_origin_and_a_checkpoint_is_its_model(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\na,Alien Worlds\nb,Home Cooking\n")
    ds = pipeline.load_data(items=str(items))
    assert ds.meta["origin"] == {"items": str(items.resolve())} and len(ds.interactions) == 0
    assert pipeline.source_name(ds) == f"items:{items.resolve()}"
    with pytest.raises(LLMRecError, match="needs an interaction log"):
        pipeline.obtain(items=str(items), model="itemknn")
    with pytest.raises(LLMRecError, match="a checkpoint is its model"):
        pipeline.obtain(model_dir=str(tmp_path), model="itemknn")
    with pytest.raises(LLMRecError, match="not both"):
        pipeline.obtain(model_dir=str(tmp_path), items=str(items))
    assert pipeline.build(text=True).name == "zero-shot" and pipeline.build().name == "itemknn"
