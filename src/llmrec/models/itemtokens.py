"""A pretrained causal LM with one new token per item: it reads a history as item tokens and generates the
next item token, so it can only name real items, and ranking the whole catalogue is one forward pass.

Sequence (one user, right-padded in a batch)::

    [prompt tokens: "Recently watched:"] [item 17] [item 3] ... [item 240]   -> logits over item tokens

- **Item tokens**: item i gets its own embedding row, initialised from the LM's input embedding of the
  item's title: the mean of its title tokens' embeddings, rescaled to their mean norm (so what the LM
  knows about the words carries over). The output layer is tied to the same rows (as SmolLM2's vocabulary
  is), plus a learned bias per item: ``logits [b, T, n_items] = hidden @ item_emb.T + bias``. The softmax is
  over item tokens only (thousands, not the LM's 49k), so decoding is constrained by construction. The
  unconstrained rate reported beside it is how often the argmax over the whole vocabulary (the LM's text
  tokens plus the item tokens) is a text token.
- **Whole histories**: each user's history is cut into windows of ``max_history + 1`` items
  (``training.windows``, newest first, ``windows`` of them, 0 = all), one row each, and the loss is the
  next-item cross-entropy at every item position: one forward pass trains every transition in the row.
  Rows are batched by similar length (little padding; causal attention needs no mask when padding is on
  the right, and rows are not packed together, so no row attends to another user's items).
- **Cheaper network**: the first ``layers`` transformer layers of the LM (0 = all), then its final norm.
  ``finetune=full`` trains those layers, the norm and the item rows; ``lora`` trains LoRA adapters on the
  layers' projections (merged into the weights after training) plus the norm and the item rows; ``none``
  trains nothing: the zero-shot baseline. The LM's text-token embeddings are frozen in every mode (they
  only embed the prompt). ``bf16=true`` trains the LM under bfloat16 autocast when the CPU has native
  bfloat16 (AVX512-BF16 or AMX, read from /proc/cpuinfo at run time) or on a GPU; elsewhere in fp32.
  Ranking is always fp32, so a user's scores do not depend on the batch they are ranked in.
- **Ranking** a batch of users: the last real position's item logits [b, n_items]: one forward pass for
  every item at once (the evaluator's full ranking). An empty history scores items by training popularity.
- **Text queries** (``recommend_text``): ``text_prompt`` with the request filled in, then the history's
  item tokens if one is given; the answer is the item-token argmax, so it is always a real item.

Bad input: titles that collide (tokens are per item id: items with the same title start from the same
vector and training tells them apart; the zero-shot model ties them and the lower index ranks first);
a history longer than ``max_history`` keeps its newest items; new items (``add_items``) get tokens
initialised from their title the same way (an updated item keeps its trained token); an LM name that
cannot be loaded offline is one ``LLMRecError``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .. import training
from ..config import Checked, option
from ..errors import ConfigError, DataError, LLMRecError
from ..lm import load_causal_lm, torch_threads
from ..metrics import top_k_excluding
from .base import Recommendations, Recommender

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class ItemTokensConfig(Checked):
    model_name: str = "smollm2-135m"  # a packaged name, tiny-random (tests), or a Hugging Face name / folder
    layers: int = option(4, ge=0)     # the LM's first N transformer layers (0 = all)
    finetune: Literal["full", "lora", "none"] = "full"  # none: the zero-shot baseline
    prompt: str = "Recently watched:"  # text before the history's item tokens ("" = none)
    text_prompt: str = "Request: {text}\nRecently watched:"  # recommend_text: the request, then history items
    max_history: int = option(50, ge=1)  # items of history read (the newest)
    windows: int = option(0, ge=0)    # training rows of max_history + 1 items per user, newest first (0 = all)
    epochs: int = option(10, ge=0)
    batch_size: int = option(16, ge=1)
    learning_rate: float = option(3e-4, gt=0.0)       # transformer layers (or LoRA adapters) and the norm
    item_learning_rate: float = option(1e-3, gt=0.0)  # item token rows and biases
    weight_decay: float = option(0.0, ge=0.0)
    dropout: float = option(0.1, ge=0.0, lt=1.0)      # on the input embeddings while training
    lora_rank: int = option(16, ge=1)
    lora_alpha: int = option(32, ge=1)
    bf16: bool = True                 # train under bfloat16 autocast where the CPU (or GPU) has it natively
    patience: int = option(3, ge=1)
    eval_every: int = option(1, ge=1)
    eval_users: int = option(0, ge=0)  # validate on a fixed random sample of this many users (0 = all)
    score_batch: int = option(64, ge=1)  # users per forward pass when ranking
    latency_sample: int = option(50, ge=0)  # users ranked one at a time after fitting, for per-user latency
    max_minutes: float = option(0.0, ge=0.0)  # wall-clock training budget (0 = none), checked between batches
    seed: int = 0
    device: str = "cpu"               # auto = cuda when present
    threads: int = option(0, ge=0)    # torch CPU threads while fitting and scoring (0 = torch's default)

    RULES = (("text_prompt", lambda c: "{text}" in c.text_prompt,
              "the template {text_prompt!r} has no {{text}} slot for the request"),)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bfloat16 on this CPU (AVX512-BF16 or AMX), from /proc/cpuinfo; False where it cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def title_texts(catalog, start: int = 0) -> list[str]:
    """Each item's title (its id where it has none), whitespace collapsed, from index ``start``."""
    titles = catalog.titles()[start:]
    return [" ".join(str(t).split()) or str(catalog.ids.id(start + j)) for j, t in enumerate(titles)]


class FrozenEmbedding(nn.Module):
    """The LM's text-token embeddings, frozen and left out of the state dict (they are the LM's, reloaded
    with it): only the prompt is embedded with them."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class Net(nn.Module):
    """The truncated LM body plus the item tokens. ``forward(prefix, items)`` -> hidden [b, P + T, d]."""

    def __init__(self, body: nn.Module, item_emb: torch.Tensor, dropout: float):
        super().__init__()
        self.body = body
        self.items = nn.Parameter(item_emb)                  # [n_items, d]
        self.bias = nn.Parameter(torch.zeros(len(item_emb)))  # [n_items]
        self.drop = nn.Dropout(dropout)

    def forward(self, prefix: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """prefix float [b, P, d] (prompt embeddings, P >= 1), items int64 [b, T] (right-padded with any
        valid index) -> last hidden states [b, P + T, d] (after the LM's final norm)."""
        x = torch.cat([prefix, F.embedding(items, self.items)], 1)
        return self.body(inputs_embeds=self.drop(x), use_cache=False).last_hidden_state

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h.float() @ self.items.float().T + self.bias.float()


class ItemTokens(Recommender):
    name = "item-tokens"
    Config = ItemTokensConfig
    supports_resume = True
    fresh_scores = True

    RESUMABLE_CHANGES = ("epochs", "patience", "max_minutes", "threads", "device", "latency_sample",
                         "score_batch", "eval_users")

    # -- set-up ------------------------------------------------------------------------------------
    def _load(self, n_items: int | None = None) -> None:
        """The LM cut to ``layers``, its text embeddings frozen, and the item tokens of the catalogue
        (initialised from titles; ``n_items`` rows when loading a checkpoint of that size)."""
        cfg = self.config
        lm, self.tok = load_causal_lm(cfg.model_name, cfg.seed)
        body = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
        n_layers = len(body.layers)
        if cfg.layers > n_layers:
            raise ConfigError(f"ItemTokensConfig.layers: {cfg.model_name} has {n_layers} layers, got {cfg.layers}")
        k = cfg.layers or n_layers
        body.layers = body.layers[:k]
        body.config.num_hidden_layers = k
        if hasattr(body.config, "layer_types") and body.config.layer_types:
            body.config.layer_types = body.config.layer_types[:k]
        emb = lm.get_input_embeddings().weight.detach()
        self.text_emb = emb.clone()
        out = lm.get_output_embeddings()
        self.text_out = emb if out is None or out.weight is lm.get_input_embeddings().weight else out.weight.detach()
        body.embed_tokens = FrozenEmbedding(self.text_emb)
        for p in body.parameters():
            p.requires_grad_(cfg.finetune == "full")
        self.n_layers_used = k
        ids = self.tok(cfg.prompt, add_special_tokens=False).input_ids if cfg.prompt else []
        start = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        self.prompt_ids = ids or [int(start)]  # a row needs one position before the first item
        self.device = training.device(cfg.device)
        init = self.title_vectors(title_texts(self.catalog)[:n_items])
        self.net = Net(body, init, cfg.dropout).to(self.device)
        self.text_emb, self.text_out = self.text_emb.to(self.device), self.text_out.to(self.device)
        self.use_bf16 = cfg.bf16 and (self.device.type == "cuda" or cpu_has_bf16())

    def title_vectors(self, titles: list[str]) -> torch.Tensor:
        """float32 [n, d]: each title's mean token embedding, rescaled to its tokens' mean norm."""
        rows = []
        for t in titles:
            ids = self.tok(" " + t, add_special_tokens=False).input_ids or [int(self.tok.eos_token_id)]
            e = self.text_emb[torch.tensor(ids)]
            m = e.mean(0)
            rows.append(m * (e.norm(dim=1).mean() / m.norm().clamp(min=1e-8)))
        if not rows:
            return torch.zeros(0, self.text_emb.shape[1])
        return torch.stack(rows).float()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # -- training ----------------------------------------------------------------------------------
    def _fit(self, data, train, split, progress) -> None:
        if len(self.catalog) == 0:
            raise DataError("the catalogue is empty: no item to generate")
        cfg = self.config
        with torch_threads(cfg.threads):
            training.seed_everything(cfg.seed)
            self._load()
            self._reset_counters()
            self.popularity = np.bincount(train.item, minlength=data.n_items).astype(np.float32)
            self.result = None
            t0 = time.perf_counter()
            if cfg.finetune != "none" and cfg.epochs > 0:
                self._train(data, split, progress)
            self.train_seconds = time.perf_counter() - t0
            self.net.eval()
        self._reset_counters()

    def _train(self, data, split, progress: bool) -> None:
        cfg = self.config
        net = self.net
        if cfg.finetune == "lora":
            from peft import LoraConfig, get_peft_model
            net.body = get_peft_model(net.body, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                           lora_dropout=0.0, target_modules=LORA_TARGETS))
        for p in net.body.base_model.model.norm.parameters() if cfg.finetune == "lora" else net.body.norm.parameters():
            p.requires_grad_(True)
        rows = [w for h in self._histories for w in training.windows(h, cfg.max_history + 1, cfg.windows)
                if len(w) >= 2]
        if not rows:
            raise DataError(f"data set {data.name!r} has no training history with 2 or more items: "
                            f"{self.name} learns from item -> next item transitions")
        lengths = np.array([len(r) for r in rows])
        body_params = [p for p in net.body.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": body_params, "lr": cfg.learning_rate},
                                 {"params": [net.items, net.bias], "lr": cfg.item_learning_rate}],
                                weight_decay=cfg.weight_decay)
        n_pos = int(lengths.sum() - len(rows))
        self.train_info = {"rows": len(rows), "positions_per_epoch": n_pos,
                           "tokens_per_epoch": int(lengths.sum() + len(rows) * (len(self.prompt_ids) - 1)),
                           "bf16_autocast": self.use_bf16, "layers_used": self.n_layers_used,
                           "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad)}
        if progress:
            print(f"{self.name}: {self.n_layers_used} layers, {cfg.finetune} fine-tune, "
                  f"{len(rows):,} rows / {n_pos:,} next-item positions per epoch, softmax over "
                  f"{len(self.catalog):,} item tokens, bf16 autocast {'on' if self.use_bf16 else 'off'}",
                  file=sys.stderr, flush=True)
        P = len(self.prompt_ids)
        prefix_ids = torch.tensor(self.prompt_ids, device=self.device)

        def batches(epoch: int):
            rng = np.random.default_rng([cfg.seed, epoch])
            order = np.argsort(lengths + rng.random(len(lengths)) * 4, kind="stable")
            chunks = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            for j in rng.permutation(len(chunks)):
                yield [rows[i] for i in chunks[j]]

        def step(batch) -> torch.Tensor:
            t = max(len(r) for r in batch)
            seq = np.zeros((len(batch), t), np.int64)
            real = np.zeros((len(batch), t), bool)
            for r, w in enumerate(batch):
                seq[r, :len(w)], real[r, :len(w)] = w, True
            seq_t, real_t = torch.from_numpy(seq).to(self.device), torch.from_numpy(real).to(self.device)
            prefix = self.text_emb[prefix_ids].expand(len(batch), P, -1)
            with self._autocast():
                h = net(prefix, seq_t[:, :-1])[:, P:]        # [b, T-1, d]: after each input item
            keep = real_t[:, 1:]
            return F.cross_entropy(net.logits(h[keep]), seq_t[:, 1:][keep])  # over item tokens only

        validate = training.validator(self, data, split, cfg.eval_users, cfg.seed)
        self.result = training.fit_loop(
            net, opt, batches, step, validate, epochs=cfg.epochs, patience=cfg.patience,
            eval_every=cfg.eval_every, checkpoint_dir=self.checkpoint_dir,
            fingerprint=training.fingerprint(self, data, self.RESUMABLE_CHANGES), progress=progress,
            desc=f"{self.name} {data.name}", grad_clip=1.0, max_seconds=60.0 * cfg.max_minutes,
            batches_per_epoch=-(-len(rows) // cfg.batch_size))
        if cfg.finetune == "lora":
            net.body = net.body.merge_and_unload()
        if self.checkpoint_dir is not None:
            training.write_history(self.result, self.checkpoint_dir, f"{self.name} on {data.name}")

    # -- scoring -----------------------------------------------------------------------------------
    def _reset_counters(self) -> None:
        self._latency: list[float] = []
        self._ranked = self._text_wins = 0

    def _prefix(self, ids: list[int], b: int) -> torch.Tensor:
        return self.text_emb[torch.tensor(ids, device=self.device)].expand(b, len(ids), -1)

    @torch.no_grad()
    def _last_hidden(self, prefix_ids: list[int], histories: list[np.ndarray]) -> torch.Tensor:
        """float32 [b, d]: the hidden state after each history's newest item (or after the prefix)."""
        n = len(self.net.items)
        cut = [np.asarray(h, np.int64)[-self.config.max_history:] for h in histories]
        cut = [h[(h >= 0) & (h < n)] for h in cut]
        t = max(1, max(len(h) for h in cut))
        seq = np.zeros((len(cut), t), np.int64)
        for r, h in enumerate(cut):
            seq[r, :len(h)] = h
        last = torch.tensor([len(prefix_ids) - 1 + len(h) for h in cut], device=self.device)
        self.net.eval()  # fp32: a user's scores do not depend on the batch it is ranked in
        h = self.net(self._prefix(prefix_ids, len(cut)), torch.from_numpy(seq).to(self.device))
        return h[torch.arange(len(cut), device=self.device), last].float()

    @torch.no_grad()
    def _rank(self, prefix_ids: list[int], histories: list[np.ndarray]) -> np.ndarray:
        """float32 [b, n_items] item-token logits; counts how often a text token would have won."""
        out = np.empty((len(histories), len(self.catalog)), np.float32)
        bs = self.config.score_batch
        for s in range(0, len(histories), bs):
            part = histories[s:s + bs]
            t0 = time.perf_counter()
            h = self._last_hidden(prefix_ids, part)
            logits = self.net.logits(h)
            text_best = (h @ self.text_out.float().T).max(1).values
            scores = logits.cpu().numpy()
            self._latency += [(time.perf_counter() - t0) / len(part)] * len(part)
            self._ranked += len(part)
            self._text_wins += int((text_best > logits.max(1).values).sum())
            n = scores.shape[1]
            out[s:s + len(part), :n] = scores
            if n < out.shape[1]:  # items added after training without a token: ranked last
                out[s:s + len(part), n:] = scores.min() - 1
        return out

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """float32 [b, n_items]. An empty history scores items by training popularity."""
        with torch_threads(self.config.threads):
            scores = self._rank(self.prompt_ids, histories)
        empty = np.array([len(h) == 0 for h in histories], bool)
        if empty.any():
            pop = np.log1p(np.pad(self.popularity, (0, len(self.catalog) - len(self.popularity))))
            scores[empty] = pop
        return scores

    def score_texts(self, texts: list[str]) -> np.ndarray:
        """float32 [b, n_items]: the item-token logits after ``text_prompt`` holding each request."""
        self._check_fitted()
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise LLMRecError("score_texts needs one non-empty text per query")
        none = np.zeros(0, np.int64)
        with torch_threads(self.config.threads):
            return np.concatenate([self._rank(self._text_prefix(t), [none]) for t in texts])

    def recommend_text(self, texts: list[str], k: int = 10, histories: list[list] | None = None,
                       exclude_seen: bool = True, exclude: list | None = None,
                       candidates: np.ndarray | None = None, explain: bool = False) -> Recommendations:
        """Top-k item tokens after ``text_prompt`` holding each request (and the history's item tokens,
        when given): the LM answers the request, constrained to the catalogue by construction."""
        self._check_fitted()
        if isinstance(texts, str):
            texts = [texts]
        if k < 1:
            raise LLMRecError(f"k must be at least 1, got {k}")
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise LLMRecError("recommend_text needs one non-empty text per query")
        hist = [np.zeros(0, np.int64)] * len(texts)
        if histories is not None:
            if len(histories) != len(texts):
                raise LLMRecError(f"{len(histories)} histories for {len(texts)} texts")
            hist = [self.catalog.ids.indices(h) for h in histories]
        with torch_threads(self.config.threads):
            scores = np.concatenate([self._rank(self._text_prefix(t), [h]) for t, h in zip(texts, hist)])
        none = np.zeros(0, np.int64)
        everyone = self.catalog.ids.indices(exclude) if exclude else none
        banned = [np.concatenate([h if exclude_seen else none, everyone]) for h in hist]
        ids, top = top_k_excluding(scores, k, banned, candidates, copy=False)
        ext = self.catalog.ids.ids_or_none(ids)
        expl = None
        if explain:
            expl = [[{**e, "request": t} for e in self.explain_items(h, ids[b][ids[b] >= 0])]
                    + [{}] * int((ids[b] < 0).sum()) for b, (t, h) in enumerate(zip(texts, hist))]
        return Recommendations(ext, top, expl)

    def _text_prefix(self, text: str) -> list[int]:
        prompt = self.config.text_prompt.replace("{text}", " ".join(text.split()))
        return self.tok(prompt, add_special_tokens=False).input_ids or self.prompt_ids

    def explain_items(self, history: np.ndarray, items: np.ndarray) -> list[dict]:
        """Each item's logit and, as reasons, the history items whose tokens are closest to its token."""
        table = F.normalize(self.net.items.detach().float(), dim=-1).cpu().numpy()
        h = np.asarray(history, np.int64)
        h = h[h < len(table)][-self.config.max_history:]
        scores = self.score_histories([h])[0]
        h = np.unique(h)
        titles = self.catalog.titles()
        out = []
        for i in items:
            e = {"score": float(scores[i]), "history_items_read": int(min(len(history), self.config.max_history))}
            if len(h) and i < len(table):
                s = table[h] @ table[i]
                top = np.argsort(-s, kind="stable")[:3]
                e["because"] = [{"item_id": self.catalog.ids.id(h[j]), "title": titles[h[j]],
                                 "similarity": round(float(s[j]), 4)} for j in top]
            out.append(e)
        return out

    # -- new items -----------------------------------------------------------------------------------
    def add_items(self, rows: pd.DataFrame | list[dict]) -> np.ndarray:
        """Add or update items; a new item gets a token initialised from its title (the mean of the trained
        biases as its bias), recommendable at once; an updated item keeps its trained token."""
        self._check_fitted()
        rows = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
        catalog, idx = self.catalog.upsert(rows)
        old = len(self.net.items)
        self.catalog = catalog
        if len(catalog) > old:
            with torch.no_grad():
                new = self.title_vectors(title_texts(catalog, old)).to(self.net.items)
                self.net.items = nn.Parameter(torch.cat([self.net.items.detach(), new]))
                b = self.net.bias.detach()
                self.net.bias = nn.Parameter(torch.cat([b, b.mean().expand(len(new))]))
            self.popularity = np.pad(self.popularity, (0, len(catalog) - len(self.popularity)))
        return idx

    # -- reporting ---------------------------------------------------------------------------------
    def _latency_single(self) -> list[float]:
        """Seconds to rank all items for one user at a time, for ``latency_sample`` training histories."""
        hist = [h for h in self._histories if len(h)][:self.config.latency_sample]
        out = []
        with torch_threads(self.config.threads):
            for h in hist:
                t0 = time.perf_counter()
                self._rank(self.prompt_ids, [h])
                out.append(time.perf_counter() - t0)
        return out

    def benchmark_extra(self) -> dict:
        ranked, wins, batched = self._ranked, self._text_wins, list(self._latency)
        single = np.array(self._latency_single() or [0.0]) * 1000
        lat = np.array(batched or [0.0]) * 1000
        r = getattr(self, "result", None)
        return {"invalid_rate": 0.0,
                "invalid_rate_unconstrained": round(wins / max(ranked, 1), 4),
                "invalid_rate_note": "constrained: 0 by construction (the softmax is over item tokens only); "
                                     "unconstrained: share of the ranked histories (every evaluated user, "
                                     "test and validation) whose argmax over the whole vocabulary (text "
                                     "tokens + item tokens) is a text token",
                "latency_ms_p50": round(float(np.percentile(single, 50)), 2),
                "latency_ms_p95": round(float(np.percentile(single, 95)), 2),
                "latency_note": f"one user at a time, all items ranked, {len(single)} training histories; "
                                f"batched ({self.config.score_batch} users a pass) in evaluation: "
                                f"p50 {np.percentile(lat, 50):.2f} ms a user",
                **self.card_extra(),
                **({"history": r.history} if r is not None else {})}

    def card_extra(self) -> dict:
        r = getattr(self, "result", None)
        titles = title_texts(self.catalog) if self.catalog is not None else []
        return {"train_seconds": round(getattr(self, "train_seconds", 0.0), 1),
                "layers_used": getattr(self, "n_layers_used", None),
                "bf16_autocast": getattr(self, "use_bf16", None),
                "items_sharing_a_title": len(titles) - len(set(titles)),
                **({"training": r.summary(), **getattr(self, "train_info", {})} if r is not None else {})}

    # -- checkpoints -------------------------------------------------------------------------------
    def _save_extra(self, folder: Path) -> None:
        training.save_training_files(getattr(self, "result", None), self.checkpoint_dir, folder, self.name)

    def _state(self) -> dict[str, np.ndarray]:
        state = {f"net.{k}": v.detach().float().cpu().numpy() for k, v in self.net.state_dict().items()}
        state["popularity"] = self.popularity
        return state

    def _load_state(self, state: dict[str, np.ndarray], folder: Path) -> None:
        n = len(state["popularity"])
        if n != len(self.catalog):
            raise LLMRecError(f"{folder}: weights for {n} items but the catalogue has {len(self.catalog)}; "
                              "the checkpoint belongs to another catalogue")
        with torch_threads(self.config.threads):
            self._load(n)
            training.load_net_state(self.net, state, folder)
        self.popularity = state["popularity"]
        self._reset_counters()

