"""Item text: a template that turns an item's fields into one string, and tags chosen by a language model.

A template is a string with ``{field}`` placeholders; a part in square brackets is kept only when every
field inside it has a value, so one template serves catalogues with and without years, genres or tags:

    DEFAULT_TEMPLATE = "{title}[ ({year})][. By {author}][. {publisher}][. Genres: {genres}][. {description}]"
                       "[. Tags: {tags}]"

so Book-Crossing's books read "Title (2001). By Author. Publisher" and MovieLens films, which have no author
or publisher column, keep their text byte for byte.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from .data import Catalog
from .errors import DataError, LLMRecError

DEFAULT_TEMPLATE = ("{title}[ ({year})][. By {author}][. {publisher}][. Genres: {genres}][. {description}]"
                    "[. Tags: {tags}]")
_FIELD = re.compile(r"\{(\w+)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


def template_fields(template: str) -> list[str]:
    return list(dict.fromkeys(_FIELD.findall(template)))


def _value(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    s = str(v).strip()
    return "" if s.lower() in ("nan", "none", "<na>") else s


def render(fields: dict, template: str = DEFAULT_TEMPLATE) -> str:
    """One item's text. Optional ``[...]`` parts vanish when a field in them is missing or empty."""
    vals = {k: _value(fields.get(k)) for k in template_fields(template)}

    def optional(m: re.Match) -> str:
        part = m.group(1)
        return _FIELD.sub(lambda f: vals[f.group(1)], part) if all(vals[f] for f in _FIELD.findall(part)) \
            else ""

    text = _OPTIONAL.sub(optional, template)
    return _FIELD.sub(lambda f: vals[f.group(1)], text).strip()


def item_texts(catalog: Catalog, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """Every item's text, row order. Raises DataError when the catalogue has none of the template's fields;
    items whose text comes out empty fall back to their id (with one warning)."""
    fields = template_fields(template)
    if not fields:
        raise LLMRecError(f"template {template!r} has no {{field}} placeholders")
    present = [f for f in fields if f in catalog.frame.columns]
    if not present:
        raise DataError(f"the catalogue has no text column: the template uses {fields}, the catalogue has "
                        f"{list(catalog.frame.columns)}; add a title or description column or map one "
                        "(e.g. --item-columns title=name)", field=fields[0])
    frame = catalog.frame.reindex(columns=list(dict.fromkeys(["item_id", *present])))
    texts, empty = [], 0
    for rec in frame.to_dict("records"):
        t = render(rec, template)
        if not t:
            empty += 1
            t = str(rec["item_id"])
        texts.append(t)
    if empty:
        warnings.warn(f"{empty} item(s) have no text in {present}; their id stands in for the text",
                      UserWarning, stacklevel=2)
    return texts


def split_tags(value) -> list[str]:
    """"a, b|c" -> ["a", "b", "c"] (comma, semicolon or pipe separated)."""
    s = _value(value)
    return [t.strip().lower() for t in re.split(r"[,;|]", s) if t.strip()] if s else []


def item_tags(catalog: Catalog, rows=None) -> list[list[str]]:
    """Each item's (or each of ``rows``') tags and genres as lower-case lists (empty when the catalogue
    has neither)."""
    cols = [c for c in ("tags", "genres") if c in catalog.frame.columns]
    frame = catalog.frame if rows is None else catalog.frame.iloc[np.asarray(rows, np.int64)]
    out = []
    for rec in frame[cols].to_dict("records") if cols else [{}] * len(frame):
        tags = []
        for c in cols:
            tags += split_tags(rec.get(c))
        out.append(list(dict.fromkeys(tags)))
    return out


def load_vocabulary(path: str | Path) -> list[str]:
    """A tag vocabulary: one tag a line (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", path=str(p))
    tags = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    if not tags:
        raise DataError("the tag vocabulary is empty", path=str(p))
    return list(dict.fromkeys(tags))


def generate_tags(texts: list[str], vocabulary: list[str], encoder, k: int = 3,
                  min_similarity: float = 0.0) -> list[list[tuple[str, float]]]:
    """For each text, the ``k`` vocabulary tags most similar to it by embedding cosine, best first, those
    at or above ``min_similarity`` only: ``[[(tag, similarity), ...], ...]``."""
    if not vocabulary:
        raise LLMRecError("the tag vocabulary is empty")
    if k < 1:
        raise LLMRecError(f"k must be at least 1, got {k}")
    items = encoder.encode(texts)
    vocab = encoder.encode(list(vocabulary))
    sim = items @ vocab.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return [[(vocabulary[j], round(float(sim[i, j]), 4)) for j in row if sim[i, j] >= min_similarity]
            for i, row in enumerate(top)]


def tag_catalog(catalog: Catalog, vocabulary: list[str], encoder, k: int = 3, min_similarity: float = 0.0,
                template: str = DEFAULT_TEMPLATE, column: str = "tags",
                only_missing: bool = True) -> tuple[Catalog, int]:
    """Write generated tags back into ``column`` of a copy of the catalogue (only items with no tags there,
    unless ``only_missing=False``). Returns the new catalogue and the number of items tagged."""
    frame = catalog.frame.copy()
    if column not in frame.columns:
        frame[column] = None
    todo = [i for i in range(len(frame)) if not only_missing or not _value(frame.at[i, column])]
    if todo:
        texts = item_texts(catalog, template)
        chosen = generate_tags([texts[i] for i in todo], vocabulary, encoder, k, min_similarity)
        frame[column] = frame[column].astype(object)
        for i, tags in zip(todo, chosen, strict=True):
            frame.at[i, column] = ", ".join(t for t, _ in tags)
    return Catalog(frame=frame, ids=catalog.ids.copy()), len(todo)


def write_catalog(catalog: Catalog, path: str | Path) -> Path:
    """Save a catalogue as CSV, TSV, JSONL or Parquet by the file's extension (written atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    suffix = "".join(path.suffixes[-1:]).lower()
    frame = catalog.frame
    if suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    elif suffix in (".jsonl", ".json"):
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    elif suffix == ".tsv":
        frame.to_csv(tmp, sep="\t", index=False)
    elif suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        raise LLMRecError(f"{path}: unknown catalogue format {suffix!r} (use .csv, .tsv, .jsonl or .parquet)")
    tmp.replace(path)
    return path


__all__ = ["DEFAULT_TEMPLATE", "generate_tags", "item_tags", "item_texts", "load_vocabulary", "render",
           "split_tags", "tag_catalog", "template_fields", "write_catalog"]
