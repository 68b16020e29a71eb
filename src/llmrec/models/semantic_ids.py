"""Generative retrieval with semantic ids, in the manner of TIGER (Rajput et al., 2023).

1. Each item's text (title, genres, ...) is embedded with a sentence encoder (all-MiniLM-L6-v2), by default
   concatenated with collaborative factors from the training log (``encoder``), and given a short code by
   residual k-means: level 1 clusters the embeddings, level 2 clusters the residuals, ...
   Items that still share a code get one more level numbering them 0, 1, 2, ... in catalogue order (the
   collision level), so every item has a distinct, fixed-length code: ``levels + 1`` tokens.
2. A small decoder-only transformer, trained from scratch on the interaction log, reads a user's history
   one item per position (each item entered as the sum of its code tokens' embeddings, plus its position),
   so a long history stays a short context; a small code head then predicts the next item's code token by
   token (each level from the history state plus the embeddings of the tokens before it). Every position of
   every history is a training example, as in SASRec: long histories are cut into windows of
   ``max_history + 1`` items that share one item at each edge, so no transition is lost. The transformer
   block is SASRec's (sasrec.Block, with a feed-forward 4x wider); training runs on the shared loop
   (training.fit_loop: resume, time budget, learning-rate schedule, device) and picks the epoch by
   validation NDCG@10 (training.validator).
3. Recommending (``decoding="beam"``, the default) = beam search over the next item's code, constrained by
   a trie of the catalogue's codes, with the user's history pruned from the trie; the score is the code's
   log-probability. Items outside the beam score strictly below every beam item (``OUTSIDE``), ties then
   fall to item index. ``decoding="exhaustive"`` instead scores every catalogue item by its code's
   log-probability (teacher forcing through each level's distinct prefixes): an exact full ranking with no
   search, affordable for small catalogues; it can return no invalid item by construction.

(TIGER trains an RQ-VAE and an encoder-decoder; here residual k-means and a decoder-only model keep it
small enough to train on ml-1m on a CPU.)
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import training
from ..config import Checked, option
from ..errors import DataError
from ..lm import torch_threads
from ..trie import Trie, beam_search, generation_report, greedy_unconstrained
from ..vectors import l2_normalize
from .base import Recommender
from .sasrec import Block

OUTSIDE = -1.0e4  # score of items the beam did not return (log-probs of codes are far above it)


@dataclass(frozen=True)
class SemanticIdsConfig(Checked):
    levels: int = option(3, ge=1)
    codebook_size: int = option(32, ge=1)
    # minilm: text embeddings only (as TIGER); minilm+cf (default, chosen on ml-100k validation): text
    # concatenated with collaborative item factors (an SVD of the training user-item matrix), so co-watched
    # items share code prefixes; random: codes without meaning (an ablation)
    encoder: Literal["minilm", "minilm+cf", "random"] = "minilm+cf"
    cf_dim: int = option(64, ge=1)
    embedding_size: int = option(128, ge=1)
    layers: int = option(2, ge=1)
    heads: int = option(4, ge=1)
    ff_mult: int = option(4, ge=1)  # feed-forward width = ff_mult x embedding_size
    dropout: float = option(0.2, ge=0.0, lt=1.0)
    max_history: int = option(200, ge=1)  # items (one position each); longer histories keep the most recent
    epochs: int = option(30, ge=0)
    batch_size: int = option(64, ge=1)
    learning_rate: float = option(2e-3, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays over `epochs`
    warmup_epochs: int = option(0, ge=0)
    weight_decay: float = option(0.01, ge=0.0)
    beam_size: int = option(20, ge=1)
    top_k: int = option(20, ge=1)  # items returned by the beam (the rest score OUTSIDE)
    # beam: trie-constrained beam search (top_k items; the rest score OUTSIDE); exhaustive: every catalogue
    # item scored by its code's log-probability, teacher-forced level by level (an exact full ranking, for
    # small catalogues: cost grows with the number of distinct code prefixes)
    decoding: Literal["beam", "exhaustive"] = "beam"
    patience: int = option(3, ge=1)  # validations without improvement before stopping
    max_minutes: float = option(0.0, ge=0.0)  # wall-clock training budget (0 = none), checked between batches
    validate: bool = True  # pick the epoch by validation NDCG@10 (false: train every epoch, keep the last)
    eval_users: int = option(500, ge=0)  # validation on a fixed random sample of this many users (0 = all)
    kmeans_iters: int = option(25, ge=1)
    invalid_sample: int = option(200, ge=0)  # training histories decoded without the trie (invalid items)
    seed: int = 0
    device: str = "auto"  # auto = cuda when present, else cpu
    threads: int = option(0, ge=0)  # torch CPU threads while fitting and scoring (0 = torch's default)

    RULES = (("heads", lambda c: c.embedding_size % c.heads == 0,
              "embedding_size {embedding_size} must be divisible by heads {heads}"),)
    # valid_users=0 meant "no validation"; N > 0 a sample of N validation users
    RENAMED = {"valid_users": lambda v: {"eval_users": v} if v else {"validate": False}}
    SEARCH_SPACE = {"learning_rate": ("float", 5e-4, 5e-3, True), "dropout": ("float", 0.0, 0.4, False),
                    "weight_decay": ("choice", [0.0, 0.01, 0.1])}


# -- codes ------------------------------------------------------------------------------------------
def item_texts(catalog) -> list[str]:
    """Title, then the other text fields, for each item."""
    fields = [f for f in catalog.text_fields if f != "title"]
    titles = catalog.titles()
    out = []
    for i, t in enumerate(titles):
        parts = [t] + [str(catalog.frame[f].iloc[i]) for f in fields
                       if catalog.frame[f].iloc[i] is not None and str(catalog.frame[f].iloc[i]) != "nan"]
        out.append(". ".join(parts))
    return out


def cf_factors(histories: list[np.ndarray], n_items: int, dim: int, seed: int) -> np.ndarray:
    """Item factors float32 [n_items, dim] from a truncated SVD of the binary user-item matrix."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    x = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(histories), n_items))
    x.data[:] = 1.0
    k = max(1, min(dim, min(x.shape) - 1))
    _, s, vt = svds(x.astype(np.float64), k=k, random_state=seed)
    return (vt.T * np.sqrt(s)[None]).astype(np.float32)


def embed_items(catalog, encoder: str, seed: int, histories=None, cf_dim: int = 64) -> np.ndarray:
    """float32 [n_items, d], L2-normalised (each half normalised first for minilm+cf)."""
    if encoder == "minilm+cf":
        text = embed_items(catalog, "minilm", seed)
        cf = l2_normalize(cf_factors(histories, len(catalog), cf_dim, seed))
        return l2_normalize(np.concatenate([text, cf], axis=1))
    if encoder == "random":
        x = np.random.default_rng(seed).normal(size=(len(catalog), 64)).astype(np.float32)
    else:  # the shared MiniLM, through its on-disk cache
        from .. import encoders
        x = encoders.cached("minilm").encode(item_texts(catalog), normalize=False, progress=False)
    return l2_normalize(x)


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scipy's kmeans2, k-means++ seeding): (assignments int64 [n], centroids [k, d]). ``k`` is
    capped at the number of distinct rows; an empty cluster keeps its centroid (its items then share a
    code prefix, which the collision level resolves)."""
    from scipy.cluster.vq import kmeans2
    k = min(k, len(np.unique(x, axis=0)))
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(0, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "one of the clusters is empty"
        c, assign = kmeans2(x, k, iter=iters, minit="++", seed=rng)
    return assign.astype(np.int64), c


def residual_codes(x: np.ndarray, levels: int, k: int, iters: int, seed: int) -> np.ndarray:
    """Residual k-means codes int64 [n, levels + 1], the last level resolving collisions."""
    rng = np.random.default_rng(seed)
    res = x.astype(np.float64).copy()
    codes = np.zeros((len(x), levels + 1), dtype=np.int64)
    for lv in range(levels):
        a, c = kmeans(res, k, iters, rng)
        codes[:, lv] = a
        res = res - c[a]
    seen: dict[tuple, int] = {}
    for i in range(len(x)):
        key = tuple(codes[i, :levels])
        codes[i, levels] = seen.get(key, 0)
        seen[key] = codes[i, levels] + 1
    return codes


# -- the sequence model -----------------------------------------------------------------------------
class ItemCodeNet(nn.Module):
    """A causal transformer over items (one input vector per item: the sum of its code tokens' embeddings
    plus the item's position) and a small code head predicting the next item's code token by token, each
    level from the history state plus the embeddings of the tokens decoded before it.

    tokens: int64 [n_items, width] (each level's codes in their own block of the vocabulary, 0 = BOS)."""

    def __init__(self, tokens: np.ndarray, vocab: int, cfg: SemanticIdsConfig):
        super().__init__()
        d, width = cfg.embedding_size, tokens.shape[1]
        self.max_history = cfg.max_history
        table = np.concatenate([np.zeros((1, width), np.int64), tokens])  # row 0: BOS (token 0 only)
        table[0, 1:] = -1
        self.register_buffer("codes", torch.from_numpy(table), persistent=False)
        end = tokens.max(0) + 1  # level lv's tokens are [end[lv - 1], end[lv]) (level 0 from 1)
        mask = torch.full((width, vocab), -1e9)
        for lv in range(width):
            mask[lv, 1 if lv == 0 else end[lv - 1]:end[lv]] = 0.0  # each level predicts its own block
        self.register_buffer("level_mask", mask, persistent=False)
        self.tok = nn.Embedding(vocab + 1, d, padding_idx=vocab)  # index vocab (from -1): nothing
        self.pos = nn.Embedding(cfg.max_history + 1, d)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.dropout, cfg.ff_mult) for _ in range(cfg.layers))
        self.ln, self.drop = nn.LayerNorm(d), nn.Dropout(cfg.dropout)
        self.prev, self.level = nn.Embedding(vocab, d), nn.Embedding(width, d)
        self.head_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head_ln, self.out = nn.LayerNorm(d), nn.Linear(d, vocab)

    def history(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """items int64 [b, t] (0 = BOS or right padding, i + 1 = item i), each row's first ``lengths`` [b]
        entries real -> states [b, t, d]. Positions count back from each row's last entry (as in SASRec),
        so the most recent item always has the same position."""
        t = items.shape[1]
        c = self.codes[items]
        steps = torch.arange(t, device=items.device)
        pos = (self.max_history + 1 - lengths[:, None] + steps).clamp(0, self.max_history)
        x = self.tok(torch.where(c < 0, self.tok.padding_idx, c)).sum(2) + self.pos(pos)
        x = self.drop(x)
        mask = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln(x)

    def logits(self, h: torch.Tensor, before: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """h [..., d] + embeddings of earlier code tokens ``before`` [..., n, d] -> logits [..., n, vocab] of
        the code tokens at ``levels`` (int64 [n])."""
        z = h[..., None, :] + before + self.level(levels)
        z = z + self.head_mlp(z)
        return self.out(self.head_ln(z)) + self.level_mask[levels]

    def teacher_forced(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Logits [..., width, vocab] of every level of the target ``codes`` [..., width]."""
        e = self.prev(codes)
        return self.logits(h, torch.cumsum(e, -2) - e, torch.arange(codes.shape[-1], device=codes.device))

    def next_logp(self, h: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probs [n, vocab] of the code token after ``prefix`` int64 [n, l] for states h [n, d]."""
        lv = torch.full((1,), prefix.shape[1], dtype=torch.long, device=h.device)
        return torch.log_softmax(self.logits(h, self.prev(prefix).sum(1)[:, None], lv)[:, 0], -1)


def _old_layout(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights saved before the decoder shared SASRec's block (``proj``, ``mlp.0``, ``mlp.2``) renamed to
    that block's layout (``out``, ``ff.0``, ``ff.3``): the same layers, so the same scores."""
    subs = ((r"^(net\.blocks\.\d+\.)proj\.", r"\1out."), (r"^(net\.blocks\.\d+\.)mlp\.0\.", r"\1ff.0."),
            (r"^(net\.blocks\.\d+\.)mlp\.2\.", r"\1ff.3."))
    out = {}
    for k, v in state.items():
        for pat, rep in subs:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


class _CodeDecoder:
    """The trie.Decoder protocol for one user: the history state is computed once (batched over users by
    the caller); each step runs only the code head on the tokens decoded so far."""

    def __init__(self, net: ItemCodeNet, h: torch.Tensor):
        self.net, self.h = net, h
        self.prefix = None

    def _logp(self) -> np.ndarray:
        with torch.no_grad():
            n = len(self.prefix)
            prefix = torch.from_numpy(self.prefix).to(self.h.device)
            return self.net.next_logp(self.h.expand(n, -1), prefix).cpu().numpy()

    def start(self):
        self.prefix = np.zeros((1, 0), dtype=np.int64)
        return self._logp()

    def step(self, parents, tokens):
        self.prefix = np.concatenate([self.prefix[parents], tokens[:, None]], axis=1)
        return self._logp()


class SemanticIds(Recommender):
    name = "semantic-ids"
    Config = SemanticIdsConfig
    supports_resume = True
    reports_validation = True  # when validate=True
    # config keys a resumed run may change: they do not change what a finished epoch computed
    RESUMABLE_CHANGES = ("epochs", "patience", "max_minutes", "threads", "device")

    # token layout: 0 = BOS, then each level's codes in its own block
    def _token_table(self) -> np.ndarray:
        sizes = self.codes.max(0) + 1
        offsets = 1 + np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.vocab = int(1 + sizes.sum())
        return self.codes + offsets[None]

    def _setup(self) -> None:
        self.tokens = self._token_table()  # int64 [n_items, levels + 1]
        self.trie = Trie(self.tokens)
        self.width = self.tokens.shape[1]
        self._prefixes = [np.unique(self.tokens[:, :lv], axis=0, return_inverse=True)
                          for lv in range(self.width)]  # (distinct prefixes, each item's) per level
        self._latency: list[float] = []
        self._returned = 0
        self._invalid = 0

    def _build(self) -> None:
        self.device = training.device(self.config.device)
        self.net = ItemCodeNet(self.tokens, self.vocab, self.config).to(self.device)

    def _fit(self, data, train, split, progress) -> None:
        with torch_threads(self.config.threads):
            self._train(data, split, progress)

    def _train(self, data, split, progress) -> None:
        cfg = self.config
        if data.n_items == 0:
            raise DataError("the catalogue is empty: nothing to generate")
        training.seed_everything(cfg.seed)
        t0 = time.perf_counter()
        self.codes = residual_codes(embed_items(data.catalog, cfg.encoder, cfg.seed, self._histories,
                                                cfg.cf_dim), cfg.levels,
                                    cfg.codebook_size, cfg.kmeans_iters, cfg.seed)
        self.code_seconds = time.perf_counter() - t0
        self._setup()
        self._build()
        chunks = self._chunks(self._histories)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        validate = training.validator(self, data, split, cfg.eval_users, cfg.seed) if cfg.validate else None
        free = tuple(k for k in self.RESUMABLE_CHANGES if not (k == "epochs" and cfg.lr_schedule != "constant"))
        self.result = training.fit_loop(
            self.net, opt, lambda epoch: _batches(chunks, cfg.batch_size, np.random.default_rng([cfg.seed, epoch])),
            lambda b: self._loss(torch.from_numpy(b).to(self.device)), validate, epochs=cfg.epochs,
            patience=cfg.patience, checkpoint_dir=self.checkpoint_dir,
            fingerprint=training.fingerprint(self, data, free), progress=progress,
            desc=f"{self.name} {data.name}", max_seconds=60.0 * cfg.max_minutes,
            batches_per_epoch=-(-len(chunks) // cfg.batch_size),
            lr_scale=training.lr_schedule(cfg.lr_schedule, cfg.epochs, cfg.warmup_epochs),
            on_validation=self.on_validation)
        if self.checkpoint_dir is not None:
            training.write_history(self.result, self.checkpoint_dir, f"{self.name} on {data.name}")
        self._latency, self._returned, self._invalid = [], 0, 0

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every code token of every next item in the padded item rows x [b, t] (-1:
        padding): position j reads BOS and items < j (as ids + 1, padding reading as BOS)."""
        bos = torch.zeros(len(x), 1, dtype=torch.long, device=x.device)
        h = self.net.history(torch.cat([bos, x[:, :-1] + 1], 1), (x >= 0).sum(1))
        codes = self.net.codes[x + 1]  # padding -> the BOS row, masked out of the loss below
        logits = self.net.teacher_forced(h, codes.clamp(min=0))
        target = torch.where((x >= 0)[..., None], codes, -1)
        return F.cross_entropy(logits.reshape(-1, self.vocab), target.reshape(-1), ignore_index=-1)

    def _chunks(self, histories: list[np.ndarray]) -> list[np.ndarray]:
        """Training windows of ``max_history + 1`` items, neighbours sharing one item (training.windows)."""
        return [w for h in histories for w in training.windows(h, self.config.max_history + 1) if len(w) >= 2]

    def _recent(self, h) -> np.ndarray:
        return np.asarray(h, dtype=np.int64)[-self.config.max_history:]

    def _states(self, histories) -> torch.Tensor:
        """History states [n, d] (the transformer's output after each history's last item)."""
        rows = [self._recent(h) for h in histories]
        lens = np.array([len(r) for r in rows])
        x = np.zeros((len(rows), lens.max() + 1), dtype=np.int64)
        for i, r in enumerate(rows):
            x[i, 1:len(r) + 1] = r + 1
        with torch.no_grad():
            states = self.net.history(torch.from_numpy(x).to(self.device),
                                      torch.from_numpy(lens + 1).to(self.device))
            return states[torch.arange(len(rows), device=self.device), torch.from_numpy(lens).to(self.device)]

    def _exhaustive(self, h) -> np.ndarray:
        """Log-probability [n, n_items] of every catalogue item's full code (teacher forcing through each
        level's distinct prefixes), 16 users at a time."""
        out = np.zeros((len(h), len(self.catalog)), dtype=np.float32)
        dev = self.device
        for s in range(0, len(h), 16):
            part = h[s:s + 16]
            with torch.no_grad():
                for lv, (pre, inv) in enumerate(self._prefixes):
                    before = self.net.prev(torch.from_numpy(pre).to(dev)).sum(1)  # [p, d]
                    logp = torch.log_softmax(self.net.logits(part[:, None], before[None, :, None],
                                                             torch.tensor([lv], device=dev))[:, :, 0], -1)
                    inv_t = torch.from_numpy(np.asarray(inv).reshape(-1)).to(dev)
                    tok = torch.from_numpy(self.tokens[:, lv]).to(dev)
                    out[s:s + 16] += logp[:, inv_t, tok].cpu().numpy()
        return out

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        with torch_threads(self.config.threads):
            return self._score(histories)

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        n_items = len(self.catalog)
        out = np.full((len(histories), n_items), OUTSIDE, dtype=np.float32)
        for start in range(0, len(histories), 256):
            part = histories[start:start + 256]
            t0 = time.perf_counter()
            states = self._states(part)
            if self.config.decoding == "exhaustive":
                out[start:start + len(part)] = self._exhaustive(states)
                self._latency += [(time.perf_counter() - t0) / len(part)] * len(part)
                self._returned += len(part) * n_items  # every catalogue item, so none invalid
                continue
            shared = (time.perf_counter() - t0) / max(len(part), 1)
            for j, (h, state) in enumerate(zip(part, states, strict=True)):
                t1 = time.perf_counter()
                res = beam_search(_CodeDecoder(self.net, state[None]), self.trie, self.config.top_k,
                                  self.config.beam_size, banned=np.asarray(h, dtype=np.int64))
                self._latency.append(shared + time.perf_counter() - t1)
                self._returned += len(res.items)
                self._invalid += int(((res.items < 0) | (res.items >= n_items)).sum())
                out[start + j, res.items] = res.scores
        return out

    def explain_items(self, history, items) -> list[dict]:
        s = self.score_histories([np.asarray(history, dtype=np.int64)])[0]
        shown = self._recent(history)
        prompt = " ".join("<" + "-".join(map(str, self.codes[i])) + ">" for i in shown)
        return [{"generated": bool(s[i] > OUTSIDE), "semantic_id": self.codes[i].tolist(),
                 "score": float(s[i]), "prompt": f"[BOS] {prompt}",
                 "history_items_in_prompt": int(len(shown))} for i in items]

    # -- reporting --------------------------------------------------------------------------------
    def invalid_rate_unconstrained(self) -> float:
        """Greedy decoding with no trie on the first ``invalid_sample`` histories: the share whose code
        is no catalogue item's."""
        hist = [h for h in self._histories if len(h)][:self.config.invalid_sample]
        if not hist:
            return 0.0
        bad = 0
        for state in self._states(hist):
            toks = greedy_unconstrained(_CodeDecoder(self.net, state[None]), self.width)
            bad += self.trie.lookup(toks) < 0
        return bad / len(hist)

    def benchmark_extra(self) -> dict:
        report = generation_report(self._latency, self._invalid, self._returned,
                                   self.invalid_rate_unconstrained(), self.config.invalid_sample)
        if self.config.decoding == "exhaustive":
            report["invalid_rate_note"] = ("exhaustive decoding: no search, every catalogue item is scored by "
                                           "its code's log-probability, so none is invalid by construction; "
                                           "latency is the per-user share of a batch; unconstrained: greedy "
                                           "decoding without the trie for the first "
                                           f"{self.config.invalid_sample} training histories")
        r = getattr(self, "result", None)
        return {**report, **self.card_extra(), "device": str(getattr(self, "device", "cpu")),
                **({"history": r.history} if r is not None else {})}

    def card_extra(self) -> dict:
        distinct = len({tuple(c) for c in self.codes[:, :-1]})
        return {"semantic_id_levels": int(self.codes.shape[1]),
                "semantic_id_distinct_prefixes": distinct,
                "semantic_id_max_collisions": int(self.codes[:, -1].max() + 1),
                **({"training": r.summary(), "stopped_by_time_budget": r.out_of_time}
                   if (r := getattr(self, "result", None)) is not None else {})}

    def _save_extra(self, folder: Path) -> None:
        training.save_training_files(getattr(self, "result", None), self.checkpoint_dir, folder, self.name)

    # -- checkpoints ------------------------------------------------------------------------------
    def _state(self):
        state = {"codes": self.codes.astype(np.int64)}
        for k, v in self.net.state_dict().items():
            state["net." + k] = v.detach().cpu().numpy()
        return state

    def _load_state(self, state, folder: Path) -> None:
        self.codes = state["codes"]
        self._setup()
        self._build()
        training.load_net_state(self.net, {k: v.copy() for k, v in _old_layout(state).items()
                                           if k.startswith("net.")}, folder)


def _batches(chunks: list[np.ndarray], batch_size: int, rng: np.random.Generator):
    """Shuffled, length-bucketed batches padded with -1 (ignored by the loss; read as BOS)."""
    order = rng.permutation(len(chunks))
    # bucket by length within shuffled groups so little compute goes to padding
    groups = [order[i:i + batch_size * 20] for i in range(0, len(order), batch_size * 20)]
    batches = []
    for g in groups:
        g = sorted(g, key=lambda i: len(chunks[i]))
        batches += [g[i:i + batch_size] for i in range(0, len(g), batch_size)]
    for j in rng.permutation(len(batches)):
        rows = [chunks[i] for i in batches[j]]
        x = np.full((len(rows), max(len(r) for r in rows)), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            x[i, :len(r)] = r
        yield x
