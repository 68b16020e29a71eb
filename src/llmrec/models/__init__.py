"""The model family. Each model lives in its own module and is registered here by name; modules are
imported lazily so the baselines never pull in torch."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..errors import UnknownNameError
from .base import AddsItems, FitsCatalog, Recommendations, Recommender, TextQueries, load_model

REGISTRY: dict[str, str] = {
    "popular": "llmrec.models.popular:Popular",
    "itemknn": "llmrec.models.itemknn:ItemKNN",
    "zero-shot": "llmrec.models.zeroshot:ZeroShot",
    "semantic-ids": "llmrec.models.semantic_ids:SemanticIds",
    "titlegen": "llmrec.models.titlegen:TitleGen",
    "item-tokens": "llmrec.models.itemtokens:ItemTokens",
    "sasrec": "llmrec.models.sasrec:SASRec",
    "textseq": "llmrec.models.textseq:TextSeq",
    "tuned-encoder": "llmrec.models.tuned:TunedEncoder",
    "ensemble": "llmrec.models.ensemble:Ensemble",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get_class(name: str) -> type[Recommender]:
    if name not in REGISTRY:
        raise UnknownNameError("model", name, names())
    module, cls = REGISTRY[name].split(":")
    return getattr(import_module(module), cls)


def get(name: str, config: dict[str, Any] | None = None, **overrides: Any) -> Recommender:
    """A fresh model by registered name, with config keys checked against its Config."""
    return get_class(name)(config, **overrides)


__all__ = ["REGISTRY", "AddsItems", "FitsCatalog", "Recommendations", "Recommender", "TextQueries", "get", "get_class",
           "load_model", "names"]
