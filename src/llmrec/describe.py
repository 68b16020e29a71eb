"""An instruct language model writes each item's one-line description and a few keywords from its fields.

Decoding is greedy (deterministic) and batched: the prompts of a batch are left-padded to one length, so
every row's next token sits in the last column, and one forward pass per step serves the whole batch.
Answers are cached on disk (one JSON line per item, appended as each batch finishes) under a key of the
model, the prompt and the item's fields, so a stopped run resumes where it was and a second run over the
same catalogue generates nothing. ``describe_catalog`` writes the text back into the catalogue's
``description`` and ``tags`` columns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import Catalog
from .errors import LLMRecError
from .text import _value

SYSTEM = "You write short catalogue text."
PROMPT = "Describe this item in one short sentence.\n{fields}"
# each answer is begun for the model (the right shape, no preamble) and stops at the end of its line: first
# the description, then, after it, the keywords
DESCRIPTION, KEYWORDS = "Description:", "\nKeywords:"
KEYWORD_TOKENS = 12  # greedy decoding may repeat a keyword ("Crime, Crime, ..."): repeats are dropped
FIELDS = ("title", "year", "author", "publisher", "genres")
DEFAULT_MODEL = "smollm2-135m"
_ARTICLES = {"a", "an", "the"}


@dataclass(frozen=True)
class Described:
    """One item's generated text: ``description`` (one line) and ``keywords`` (a few, lower case)."""

    description: str
    keywords: list[str]


def item_fields(row: dict, fields: tuple[str, ...] = FIELDS) -> str:
    """The fields the model reads, one ``Name: value`` line each (empty ones left out)."""
    return "\n".join(f"{f.capitalize()}: {_value(row.get(f))}" for f in fields if _value(row.get(f)))


def parse_answer(description: str, keywords: str) -> Described:
    """The model's two continuations -> (description, keywords): each one's first line, a cut-off one kept
    as far as it goes; keywords split on commas, distinct, lower case, at most five, numbers (a year the
    fields already hold, or one cut off) and lone articles left out."""
    desc = description.strip().split("\n")[0].strip().strip('"').strip()
    words = [w.strip().strip(".").strip().lower() for w in keywords.strip().split("\n")[0].split(",")]
    keep = (w for w in words if w and len(w) <= 40 and not w.isdigit() and w not in _ARTICLES)
    return Described(desc, list(dict.fromkeys(keep))[:5])


class Describer:
    """(model, tokenizer) of a causal instruct LM; ``describe(field texts)`` -> one ``Described`` each."""

    def __init__(self, model: str = DEFAULT_MODEL, max_new_tokens: int = 32, batch_size: int = 32,
                 threads: int = 0, cache: bool = True):
        from .lm import load_causal_lm
        if max_new_tokens < 1 or batch_size < 1:
            raise LLMRecError("max_new_tokens and batch_size must be at least 1")
        self.name, self.max_new_tokens, self.batch_size, self.threads = model, max_new_tokens, batch_size, threads
        self.lm, self.tok = load_causal_lm(model)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.cache_path = _cache_path(model, max_new_tokens) if cache else None

    def key(self, fields: str) -> str:
        spec = "\x00".join([self.name, SYSTEM, PROMPT, DESCRIPTION, KEYWORDS, str(self.max_new_tokens),
                            str(KEYWORD_TOKENS), fields])
        return hashlib.sha256(spec.encode()).hexdigest()

    def prompt(self, fields: str) -> str:
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT.format(fields=fields)}]
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + DESCRIPTION

    def _stops(self) -> list[int]:
        """End of turn, end of text, and the tokens that end a line."""
        ids = {self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>")}
        for nl in ("\n", "\n\n", ".\n"):
            toks = self.tok.encode(nl, add_special_tokens=False)
            if len(toks) == 1:
                ids.add(toks[0])
        return sorted(t for t in ids if isinstance(t, int) and t >= 0)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy continuations of ``prompts``, one batch: left-padded, at most ``max_new_tokens`` each
        (default the describer's), each stopped at the end of its line or turn."""
        import torch

        from .lm import torch_threads
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch_threads(self.threads), torch.inference_mode():
            out = self.lm.generate(**enc, max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False,
                                   num_beams=1, eos_token_id=self._stops(),
                                   pad_token_id=self.tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        return self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def describe_batch(self, fields: list[str]) -> list[tuple[str, str]]:
        """(description, keywords) continuations for one batch: the description first, then the keywords
        with the description in front of them."""
        prompts = [self.prompt(f) for f in fields]
        desc = self.generate(prompts)
        first = [d.strip().split("\n")[0] for d in desc]
        kw = self.generate([p + " " + d + KEYWORDS for p, d in zip(prompts, first)], KEYWORD_TOKENS)
        return list(zip(desc, kw))

    def describe(self, fields: list[str], progress: bool = True,
                 on_batch: Callable[[int, int], None] | None = None) -> list[Described]:
        """One ``Described`` per field text; cached answers are read back, the rest generated in batches
        (sorted by prompt length, so a batch pads little) and appended to the cache as each finishes."""
        cached = _read_cache(self.cache_path) if self.cache_path else {}
        keys = [self.key(f) for f in fields]
        todo = sorted({k: f for k, f in zip(keys, fields) if k not in cached}.items(), key=lambda kv: len(kv[1]))
        t0, done = time.perf_counter(), 0
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            answers = self.describe_batch([f for _, f in batch])
            rows = [{"key": k, "description": d, "keywords": w} for (k, _), (d, w) in zip(batch, answers)]
            if self.cache_path:
                _append_cache(self.cache_path, rows)
            cached.update({r["key"]: (r["description"], r["keywords"]) for r in rows})
            done += len(batch)
            if on_batch:
                on_batch(done, len(todo))
            if progress:
                rate = done / max(time.perf_counter() - t0, 1e-9)
                print(f"\rdescribe: {done:,}/{len(todo):,} items generated ({rate:.2f} items/s)", end="",
                      file=sys.stderr, flush=True)
        if progress and todo:
            print(file=sys.stderr)
        return [parse_answer(*cached[k]) for k in keys]


def _cache_path(model: str, max_new_tokens: int) -> Path:
    from .datasets import cache_dir
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:]
    return cache_dir() / "descriptions" / f"{slug}-{max_new_tokens}.jsonl"


def _read_cache(path: Path) -> dict[str, tuple[str, str]]:
    """key -> (description, keywords); a line cut off by a kill is skipped (its item is generated again)."""
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
                out[r["key"]] = (r["description"], r["keywords"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def _append_cache(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        if f.tell() > 0:  # a line cut off by a kill: start on a fresh line
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    data = "\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def describe_catalog(catalog: Catalog, describer: Describer, only_missing: bool = True,
                     progress: bool = True) -> tuple[Catalog, int]:
    """The catalogue with generated ``description`` and ``tags`` (keywords, comma-separated) for the items
    that lack a description (``only_missing``) or for all; returns it and the number of items written."""
    frame = catalog.frame.copy()
    for col in ("description", "tags"):
        if col not in frame.columns:
            frame[col] = None
    rows = frame.to_dict("records")
    todo = [i for i, r in enumerate(rows) if not only_missing or not _value(r.get("description"))]
    fields = [item_fields(rows[i]) for i in todo]
    empty = [i for i, f in zip(todo, fields) if not f]
    if empty:
        raise LLMRecError(f"item {rows[empty[0]]['item_id']!r} has none of the fields the model reads "
                          f"({', '.join(FIELDS)})")
    answers = describer.describe(fields, progress=progress)
    desc_col, tags_col = frame.columns.get_loc("description"), frame.columns.get_loc("tags")
    for i, a in zip(todo, answers):
        frame.iat[i, desc_col] = a.description or None
        frame.iat[i, tags_col] = ", ".join(a.keywords) or frame.iat[i, tags_col]
    return Catalog(frame=frame, ids=catalog.ids.copy()), len(todo)


__all__ = ["Described", "Describer", "describe_catalog", "item_fields", "parse_answer"]
