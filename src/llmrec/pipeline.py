"""From a request to a model: the one way the command line, the service, the benchmark runner and the
ensemble load data, build, fit, describe and save models.

- ``load_data``: a named data set or your own files (a catalogue alone is enough for a text model),
  cleaned as asked. The data set records where it came from (``meta["origin"]``), so that a checkpoint
  trained on your files can load them again (``llmrec evaluate --model-dir``).
- ``build``: a registered model by name, with config overrides, an encoder and a seed.
- ``obtain``: the model a request is answered with: a checkpoint, or ``build`` fitted on ``load_data``.
- ``fit_card_save``: fit (a model that resumes keeps its training state in the output folder), write the
  model card, save the checkpoint and load it back once.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset, IdMap, Interactions
from .errors import LLMRecError, UnknownNameError
from .models import FitsCatalog, Recommender
from .split import Split

DEFAULT_MODEL = "itemknn"          # with an interaction log
DEFAULT_TEXT_MODEL = "zero-shot"   # for free text, a bare catalogue, and the service
DEFAULT_DATASET = "ml-100k"        # what the service serves when given nothing


# -- data -----------------------------------------------------------------------------------------------
def load_data(*, dataset: str | None = None, interactions: str | Path | None = None,
              items: str | Path | None = None, columns: dict[str, str] | None = None,
              item_columns: dict[str, str] | None = None, unknown_items: str = "error",
              cleaning: dict | None = None, default: str | None = None, quiet: bool = True) -> Dataset:
    """A named data set (``dataset``, else ``default``), or your files: a log (``interactions``, with an
    optional catalogue ``items``) or a catalogue alone (``items``: no users, no log). ``cleaning``:
    ``duplicates`` / ``min_rating`` / ``k_core`` as ``clean.apply`` takes them; a row a step refuses is
    named by its line in the log file. ``meta["origin"]`` holds these arguments (paths made absolute)."""
    from . import datasets
    from .data import load_catalog, load_files
    from .io import location
    if dataset and (interactions or items):
        raise LLMRecError("pass either --dataset or --interactions / --items, not both")
    dataset = dataset or (None if interactions or items else default)
    if dataset:
        ds = datasets.load(dataset, quiet=quiet)
        source: dict[str, Any] = {"dataset": dataset}
    elif interactions:
        ds = load_files(interactions, items, interaction_columns=columns, item_columns=item_columns,
                        unknown_items=unknown_items)
        source = {"interactions": location(interactions), "items": location(items) if items else None,
                  "columns": columns or None, "item_columns": item_columns or None, "unknown_items": unknown_items}
    elif items:
        empty = np.zeros(0, np.int64)
        ds = Dataset(Path(items).stem, load_catalog(items, item_columns),
                     Interactions(empty, empty, np.zeros(0), np.zeros(0, np.float32)), IdMap(kind="user"))
        source = {"items": location(items), "item_columns": item_columns or None}
    else:
        raise LLMRecError("no data: pass --dataset NAME or --interactions FILE [--items FILE]")
    ds.meta["origin"] = {k: v for k, v in source.items() if v is not None}
    if cleaning:
        from .io import line_of_row
        path = str(interactions) if interactions else None
        # rows still match the file's unless unknown items were dropped
        locate = (lambda row: line_of_row(path, row)) if path and unknown_items != "drop" else None
        ds = clean(ds, cleaning, path=path, locate=locate)
    return ds


def clean(ds: Dataset, options: dict, path: str | None = None, locate=None) -> Dataset:
    """``ds`` cleaned with ``options`` (duplicates, min_rating, k_core); each step's report on stderr and in
    ``meta["cleaning"]``, the options in ``meta["cleaning_options"]``."""
    from . import clean as cleaning
    out, reports = cleaning.apply(ds, duplicates=options.get("duplicates", "keep"),
                                  rating_floor=options.get("min_rating"), k=options.get("k_core"), path=path,
                                  locate=locate)
    out.meta = {**ds.meta, **out.meta}
    if reports:
        out.meta["cleaning"] = [str(r) for r in reports]
        out.meta["cleaning_options"] = dict(options)
        for r in reports:
            print(f"llmrec: {r}", file=sys.stderr)
    return out


def source_name(ds: Dataset) -> str:
    """Where ``ds`` came from, as the service names its state: ``files:PATH``, ``items:PATH`` or the
    data set's name."""
    src = ds.meta.get("origin", {})
    if "interactions" in src:
        return f"files:{src['interactions']}"
    if "items" in src:
        return f"items:{src['items']}"
    return ds.name


def checkpoint_data(model: Recommender, cleaning: dict | None = None) -> Dataset:
    """The data a checkpoint was trained on, loaded again from its card (a named data set or the files,
    cleaned with the same options unless ``cleaning`` is given)."""
    card = model.card or {}
    source = card.get("data") or ({"dataset": card["dataset"]} if card.get("dataset") else None)
    if not source:
        raise LLMRecError("the checkpoint names no data: pass --dataset or --interactions")
    try:
        return load_data(**source, cleaning=cleaning or card.get("cleaning_options"))
    except UnknownNameError as e:
        if "data" in card or e.kind != "data set":
            raise
        raise LLMRecError(f"the checkpoint was trained on {card['dataset']!r}, which is not a named data set "
                          "(a checkpoint from an older llmrec trained on files): pass --interactions FILE "
                          "[--items FILE]") from None


# -- models ---------------------------------------------------------------------------------------------
def build(name: str | None = None, overrides: dict | None = None, *, encoder: str | None = None,
          seed: int | None = None, text: bool = False) -> Recommender:
    """A fresh model: ``name`` (default ``DEFAULT_TEXT_MODEL`` when ``text``, else ``DEFAULT_MODEL``) with
    config ``overrides``; ``seed`` for a model that has one, ``encoder`` for a model that encodes text."""
    from . import models
    name = name or (DEFAULT_TEXT_MODEL if text else DEFAULT_MODEL)
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(models.get_class(name).Config)}
    if seed is not None and "seed" in fields:
        overrides.setdefault("seed", seed)
    if encoder:
        if "encoder" not in fields:
            raise LLMRecError(f"model {name!r} uses no text encoder; --encoder works with zero-shot")
        overrides["encoder"] = encoder
    return models.get(name, overrides)


def fit_all(model: Recommender, ds: Dataset, progress: bool = False) -> Recommender:
    """``model`` fitted on everything in ``ds``; a catalogue with no log fits a model that ``FitsCatalog``,
    and a model that needs a log says so."""
    if not len(ds.interactions):
        if not isinstance(model, FitsCatalog):
            raise LLMRecError(f"model {model.name!r} needs an interaction log; pass --interactions (or "
                              f"--dataset), or use a text model ({DEFAULT_TEXT_MODEL}) on a bare catalogue")
        return model.fit_catalog(ds.catalog, progress=progress)
    return model.fit(ds, progress=progress)


def obtain(*, model_dir: str | Path | None = None, model: str | Recommender | None = None,
           overrides: dict | None = None, encoder: str | None = None, seed: int | None = None,
           text: bool = False, progress: bool = False, **data: Any) -> tuple[Recommender, str]:
    """The model a request is answered with, and where it came from: the checkpoint ``model_dir``
    (``model:PATH``), or ``model`` (a registered name, see ``build``, or an unfitted model) fitted on
    ``load_data(**data)`` (``SOURCE [MODEL]``)."""
    from . import models
    if model_dir:
        if model is not None or encoder or overrides:
            raise LLMRecError("pass either --model-dir or --model / --encoder / --set, not both: a checkpoint "
                              "is its model")
        if any(data.get(k) for k in ("dataset", "interactions", "items")):
            raise LLMRecError("pass either --model-dir or data (--dataset / --items / --interactions), not both")
        return models.load_model(model_dir), f"model:{Path(model_dir).resolve()}"
    m = model if isinstance(model, Recommender) else build(model, overrides, encoder=encoder, seed=seed,
                                                           text=text)
    ds = load_data(quiet=not progress, **data)
    return fit_all(m, ds, progress), f"{source_name(ds)} [{m.name}]"


def fit_card_save(model: Recommender, data: Dataset, split: Split | None = None,
                  out: str | Path | None = None, *, progress: bool = True,
                  measure: Callable[[Recommender], dict] | None = None) -> dict:
    """The one training path (``llmrec train``, the benchmark runner, each ensemble member): fit ``model``
    on ``data`` (``split.train`` when given), keeping its training state in ``out`` and resuming from it
    when the model ``supports_resume``; then its card: the data, the cleaning, the fit time,
    ``measure(model)`` (e.g. the metrics) and the model's ``card_extra``. With ``out`` the checkpoint is
    saved there, with every known history of ``data`` (serving starts from everything known), and
    loaded back once to check it. Returns the card."""
    from .models import load_model
    t0 = time.perf_counter()
    model.fit(data, split, progress=progress, checkpoint_dir=out if model.supports_resume else None)
    fit_s = time.perf_counter() - t0
    card: dict[str, Any] = {"dataset": data.name}
    if data.meta.get("origin"):
        card["data"] = data.meta["origin"]
    if data.meta.get("cleaning"):
        card.update(cleaning=data.meta["cleaning"], cleaning_options=data.meta.get("cleaning_options", {}))
    card["fit_seconds"] = round(fit_s, 2)
    if measure is not None:
        card.update(measure(model))
    card.update(model.card_extra())
    if out is not None:
        model.set_histories(data.histories())
        model.save(out, card=card)
        load_model(out)  # the checkpoint must load back
    return card
