"""SASRec (Kang & McAuley, 2018): a causal transformer over the item history, trained with full softmax
cross-entropy over the whole catalogue at every position (the "CE" variant that reaches ~0.28-0.30 HR@10
on ml-1m under full ranking).

Shapes: a batch of histories is left-padded to ``seq`` int64 [b, T] with 0 = padding and item i stored
as i + 1; positions count back from the most recent item (the last real item is position 0), so a user's
vector does not depend on how much padding the batch needed. The user vector is the last position's
hidden state [b, d]; scores are its dot products with the item table [n_items, d] (tied with the input
embeddings).

``block`` picks the layer: ``transformer`` (SASRec's pre-norm self-attention + feed-forward) or ``hstu``
(HSTU's gated pointwise attention with a relative position bias), which on ml-1m learns faster per
epoch and per second.

``SequentialRecommender`` holds everything but the item table, so the text-based model (textseq.py)
reuses it and only says how item vectors are made.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed, losses, training
from ..config import Checked, option, to_dict
from ..errors import ConfigError, DataError, LLMRecError
from ..lm import torch_threads
from .base import Recommender


@dataclass(frozen=True)
class SASRecConfig(Checked):
    embedding_size: int = option(64, ge=1)
    layers: int = option(2, ge=1)
    heads: int = option(1, ge=1)
    ff_mult: int = option(1, ge=1)    # feed-forward width = ff_mult x embedding_size (transformer block)
    block: Literal["transformer", "hstu"] = "transformer"  # hstu: gated pointwise attention (HSTU, 2024)
    max_history: int = option(200, ge=1)  # items of history read (the most recent)
    windows: int = option(1, ge=0)   # training windows of max_history + 1 items per user, newest first (0 = all)
    dropout: float = option(0.2, ge=0.0, lt=1.0)
    epochs: int = option(200, ge=0)
    similarity: Literal["dot", "cosine"] = "dot"  # cosine: user and item vectors L2-normalised ...
    temperature: float = option(0.05, gt=0.0)  # ... and their cosine divided by this in the softmax
    learning_rate: float = option(1e-3, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays over `epochs`
    warmup_epochs: int = option(0, ge=0)
    weight_decay: float = option(0.0, ge=0.0)
    batch_size: int = option(128, ge=1)
    patience: int = option(10, ge=1)  # validations without improvement before stopping
    eval_every: int = option(1, ge=1)  # validate every N epochs
    eval_users: int = option(0, ge=0)  # validate on a fixed random sample of this many users (0 = all)
    max_minutes: float = option(0.0, ge=0.0)  # wall-clock training budget (0 = none), checked between batches
    seed: int = 0
    device: str = "auto"        # auto = cuda when present, else cpu
    threads: int = option(0, ge=0)  # torch CPU threads while fitting and scoring (0 = torch's default)
    workers: int = option(1, ge=1)  # data-parallel training processes (DDP, gloo on CPU); batch_size is global
    engine: Literal["local", "ray"] = "local"  # workers started here (torch spawn) or by Ray Train
    loss_chunk: int = option(128, ge=0)  # softmax CE in chunks of this many positions (0 = at once)
    bf16: bool = False          # bfloat16 products in the loss (fast on CPUs with AVX512-BF16 / AMX)
    loss: Literal["auto", "full", "sampled"] = "auto"  # auto: full up to SAMPLED_ABOVE items, else sampled
    negatives: int = option(512, ge=0)  # sampled softmax: items drawn per batch, shared by its positions ...
    sampler: Literal["uniform", "popularity"] = "uniform"  # ... uniformly or by training popularity ...
    in_batch: bool = True       # ... plus the batch's own positives as negatives (logQ-corrected)

    RULES = (("heads", lambda c: c.embedding_size % c.heads == 0,
              "embedding_size {embedding_size} must be divisible by heads {heads}"),)
    RENAMED = {"max_length": "max_history", "num_blocks": "layers", "num_heads": "heads"}
    SEARCH_SPACE = {"embedding_size": ("choice", [32, 64, 128]), "layers": ("int", 1, 3, False),
                    "dropout": ("float", 0.0, 0.5, False), "learning_rate": ("float", 3e-4, 3e-3, True),
                    "weight_decay": ("choice", [0.0, 1e-5, 1e-4]), "batch_size": ("choice", [32, 64, 128])}


# loss=auto: full softmax up to this many items, sampled above. At ml-1m's 3.7k items the full softmax is
# exact and fast (its figures come from it); its cost per position grows with the catalogue while the
# sampled set stays at `negatives` + the batch's distinct positives (~1-5k), so by 50k items a full softmax
# position costs 10-50x a sampled one and an epoch on Book-Crossing (340k) takes over half an hour.
SAMPLED_ABOVE = 50_000
# recommend (not evaluate) searches an HNSW index over the item vectors, with the model's own inner
# product, for catalogues above this many items instead of scoring every item
ANN_ABOVE = 100_000
# loss=full is refused above this many items: too slow to train (see full_softmax_cost).
FULL_SOFTMAX_MAX = 200_000


def full_softmax_cost(n_items: int, c: SASRecConfig) -> str:
    """What one full-softmax batch of ``batch_size`` x ``max_history`` positions costs, in words."""
    pos = c.batch_size * c.max_history
    flops = 6.0 * pos * n_items * c.embedding_size  # forward + recomputed forward + two backward products
    mem = 4.0 * pos * n_items * (1 if c.loss_chunk <= 0 else 0) + 4.0 * 3 * n_items * c.embedding_size
    return (f"a batch of up to {c.batch_size} x {c.max_history} = {pos:,} positions against {n_items:,} items is "
            f"{flops / 1e12:.1f} TFLOP (about {flops / 5e10:.0f} s on one core at 50 GFLOP/s) and "
            f"{mem / 1e9:.1f} GB of logits and item-table gradients")


def resolve_loss(n_items: int, c: SASRecConfig) -> str:
    """``full`` or ``sampled`` for a catalogue of ``n_items``; refuses a full softmax that is too large."""
    if c.loss == "auto":
        return "full" if n_items <= SAMPLED_ABOVE else "sampled"
    if c.loss == "full" and n_items > FULL_SOFTMAX_MAX:
        raise ConfigError(f"loss=full: the catalogue has {n_items:,} items (more than {FULL_SOFTMAX_MAX:,}); "
                          f"{full_softmax_cost(n_items, c)}. Use a sampled softmax: --set loss=sampled "
                          f"--set negatives={c.negatives} (or loss=auto)")
    return c.loss


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a position-wise feed-forward layer of width
    ``ff_mult * d`` (SASRec: 1; the semantic-ids decoder: 4). ``d`` must be divisible by ``heads`` (the
    configs check it)."""

    def __init__(self, d: int, heads: int, dropout: float, ff_mult: int = 1):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        w = ff_mult * d
        self.ff = nn.Sequential(nn.Linear(d, w), nn.GELU(), nn.Dropout(dropout), nn.Linear(w, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x float [b, T, d]; mask bool [b, 1, T, T] (True = may attend)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class HSTUBlock(nn.Module):
    """The HSTU layer (Zhai et al., ICML 2024, "Actions speak louder than words"): one projection gives
    gate u, values v, queries q and keys k (SiLU); attention weights are SiLU(q.k + relative position
    bias) / max_history with no softmax, so they keep the intensity of the history rather than a
    distribution over it; the output is LayerNorm(attention values) gated by u. No separate feed-forward.
    The bias here is by distance only (no timestamps: a history is a list of items)."""

    def __init__(self, d: int, heads: int, dropout: float, max_length: int):
        super().__init__()
        self.heads, self.max_length = heads, max_length
        self.ln = nn.LayerNorm(d)
        self.uvqk = nn.Linear(d, 4 * d)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        nn.init.zeros_(self.uvqk.bias)
        self.rel = nn.Parameter(torch.randn(heads, max_length) * 0.02)  # bias by distance i - j
        self.ln_av = nn.LayerNorm(d)
        self.out = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.out.weight)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x float [b, T, d]; mask bool [b, 1, T, T] (True = may attend)."""
        b, t, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.ln(x))).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        idx = torch.arange(t, device=x.device)
        dist = (idx[:, None] - idx[None, :]).clamp(0, self.max_length - 1)
        w = F.silu(q @ k.transpose(-1, -2) + self.rel[:, dist]) * (mask / self.max_length)
        av = (w @ v).transpose(1, 2).reshape(b, t, d)
        return x + self.out(self.drop(self.ln_av(av) * u))


class SeqEncoder(nn.Module):
    """Item vectors [n_items, d] (from ``item_table``) -> user vectors: causal transformer over history."""

    def __init__(self, d: int, max_length: int, blocks: int, heads: int, dropout: float,
                 block: str = "transformer", ff_mult: int = 1):
        super().__init__()
        self.d = d
        self.pos = nn.Embedding(max_length, d)
        self.drop = nn.Dropout(dropout)
        if block == "hstu":
            self.blocks = nn.ModuleList(HSTUBlock(d, heads, dropout, max_length) for _ in range(blocks))
        else:
            self.blocks = nn.ModuleList(Block(d, heads, dropout, ff_mult) for _ in range(blocks))
        self.ln = nn.LayerNorm(d)

    def forward(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """seq int64 [b, T] (0 = pad, item i as i + 1), table float [n_items, d] -> hidden [b, T, d]."""
        b, t = seq.shape
        real = seq > 0
        # item i + 1 looks up row i; padding is zeroed below (no copy of the table with a pad row on top:
        # at a million items that copy was 150 ms of every request)
        emb = F.embedding((seq - 1).clamp(min=0), table)
        recency = torch.arange(t - 1, -1, -1, device=seq.device)
        x = self.drop(emb * math.sqrt(self.d) + self.pos(recency)) * real.unsqueeze(-1)
        causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=seq.device)
        mask = (causal & real[:, None, :]) | eye  # padded queries attend to themselves only (no NaN rows)
        mask = mask.unsqueeze(1)
        for blk in self.blocks:
            x = blk(x, mask) * real.unsqueeze(-1)
        return self.ln(x)


class ItemTable(nn.Module):
    """SASRec's items: one learned vector per item."""

    def __init__(self, n_items: int, d: int):
        super().__init__()
        self.emb = nn.Parameter(torch.randn(n_items, d) * (1.0 / math.sqrt(d)))

    def forward(self) -> torch.Tensor:
        return self.emb


class Net(nn.Module):
    def __init__(self, items: nn.Module, encoder: SeqEncoder):
        super().__init__()
        self.items, self.encoder = items, encoder


class ShardLoss(nn.Module):
    """One data-parallel rank's part of a batch's loss, for DistributedDataParallel to wrap.

    Every rank builds the same whole batch (int64 [b, T], the same seed) and takes rows rank, rank + W, ...
    (W ranks). Its mean loss is weighted by its share of the batch's real target positions, times W, so
    DDP's average of the ranks' gradients is the gradient of the whole batch's mean loss: the same as one
    process, up to the order of float sums (with dropout=0; dropout masks differ). The value returned is
    the whole batch's mean loss on every rank (so every rank logs, and stops on, the same number)."""

    def __init__(self, net: nn.Module, batch_loss):
        super().__init__()
        self.net, self.batch_loss = net, batch_loss

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        w, r = distributed.world(), distributed.rank()
        n_all = int((b[:, :-1] > 0).sum())
        mine = b[r::w]
        n = int((mine[:, :-1] > 0).sum())
        if n == 0:  # fewer rows than ranks: a zero gradient, so the all-reduce still sees every parameter
            local = sum(p.sum() for p in self.net.parameters() if p.requires_grad) * 0.0
        else:
            first = int((mine > 0).any(0).int().argmax())  # columns that are padding in every row go
            local = self.batch_loss(mine[:, first:]) * (n * w / n_all)
        total = distributed.sum_all(local) / w
        return local + (total - local).detach()


def pad_left(histories: list[np.ndarray], max_length: int) -> np.ndarray:
    """int64 [b, T]: each history's last ``max_length`` items, shifted by +1, left-padded with 0.
    T = the longest (cut) history, at least 1."""
    cut = [h[-max_length:] for h in histories]
    t = max(1, max((len(h) for h in cut), default=1))
    out = np.zeros((len(cut), t), dtype=np.int64)
    for r, h in enumerate(cut):
        if len(h):
            out[r, t - len(h):] = np.asarray(h, dtype=np.int64) + 1
    return out


class SequentialRecommender(Recommender):
    """A causal transformer over item histories, trained with full softmax CE (subclasses give items)."""

    supports_resume = True
    reports_validation = True
    loss: str = "full"          # the loss training used: full or sampled (resolve_loss)

    # -- what subclasses change ----------------------------------------------------------------
    def _item_module(self, data, n_items: int) -> nn.Module:
        raise NotImplementedError

    # config keys a resumed run may change: they do not change what a finished epoch computed
    RESUMABLE_CHANGES = ("epochs", "patience", "max_minutes", "threads", "device", "workers", "engine")

    # keys added after training states were first written, with the value those states were trained with:
    # left out of the fingerprint at that value, so older training states still resume
    LATER_KEYS = {"block": "transformer", "loss": "auto", "negatives": 512, "sampler": "uniform",
                  "in_batch": True, "ff_mult": 1}

    def _fingerprint(self, data) -> dict:
        """Config and data identity of a training state; renamed keys keep the names states were first
        written with, so those states still resume."""
        free = [k for k in self.RESUMABLE_CHANGES if not (k == "epochs" and self.config.lr_schedule != "constant")]
        first = {new: old for old, new in self.Config.RENAMED.items()}
        cfg = {first.get(k, k): v for k, v in to_dict(self.config).items()
               if k not in free and not (k in self.LATER_KEYS and v == self.LATER_KEYS[k])}
        return {"model": self.name, **cfg, "dataset": data.name, "n_items": data.n_items,
                "n_users": data.n_users}

    # -- training ---------------------------------------------------------------------------------
    def _build(self, data, n_items: int) -> None:
        c = self.config
        self.n_trained_items = n_items
        self._ann = None
        enc = SeqEncoder(c.embedding_size, c.max_history, c.layers, c.heads, c.dropout, c.block, c.ff_mult)
        self.net = Net(self._item_module(data, n_items), enc).to(self.device)

    def _fit(self, data, train, split, progress) -> None:
        c = self.config
        if c.workers > 1 and not distributed.active():
            if training.device(c.device).type != "cpu":
                raise ConfigError(f"workers={c.workers}: data-parallel training runs on CPU (gloo); "
                                  f"set device=cpu, not {c.device!r}")
            self._adopt(distributed.run(_fit_worker, c.workers, self, data, train, split, progress,
                                        engine=c.engine), data)
            return
        with torch_threads(c.threads):
            self._train(data, train, split, progress)

    def _fitted(self) -> dict:
        return {"net": self.net.state_dict(), "result": self.result, "loss": self.loss,
                "popularity": self.popularity}

    def _adopt(self, fitted: dict, data) -> None:
        """Take the weights and training result a worker process fitted (``_fitted``)."""
        self.device = training.device(self.config.device)
        self.popularity, self.loss, self.result = fitted["popularity"], fitted["loss"], fitted["result"]
        self._build(data, data.n_items)
        self.net.load_state_dict(fitted["net"])
        self.net.eval()

    def _train(self, data, train, split, progress) -> None:
        c = self.config
        training.seed_everything(c.seed)
        self.device = training.device(c.device)
        self.popularity = np.bincount(train.item, minlength=data.n_items).astype(np.float32)
        seqs = [w for h in self._histories for w in training.windows(h, c.max_history + 1, c.windows)
                if len(w) >= 2]
        if not seqs:
            raise DataError(f"data set {data.name!r} has no training history with 2 or more items: "
                            f"{self.name} learns from item -> next item pairs")
        self.loss = resolve_loss(data.n_items, c)
        self._build(data, data.n_items)
        net = self.net
        sample = None
        if self.loss == "sampled":
            sample = losses.NegativeSampler(self.popularity, c.negatives, c.sampler, c.in_batch, self.device)
        if progress:
            how = (f"sampled softmax ({'in-batch + ' if c.in_batch else ''}{c.negatives} {c.sampler} "
                   f"negatives, logQ-corrected)" if sample else "full softmax")
            print(f"{self.name}: {data.n_items:,} items -> {how} (loss={c.loss}; auto is full up to "
                  f"{SAMPLED_ABOVE:,} items)", file=sys.stderr, flush=True)
        lengths = np.array([len(s) for s in seqs])
        opt = torch.optim.Adam(net.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)

        def batches(epoch: int):
            # similar lengths together (little padding), batch order shuffled; seeded by epoch for resume
            rng = np.random.default_rng([c.seed, epoch])
            order = np.argsort(lengths + rng.random(len(lengths)) * 8, kind="stable")
            chunks = [order[i:i + c.batch_size] for i in range(0, len(order), c.batch_size)]
            for j in rng.permutation(len(chunks)):
                yield pad_left([seqs[i] for i in chunks[j]], c.max_history + 1)

        def batch_loss(b: torch.Tensor) -> torch.Tensor:
            inp, tgt = b[:, :-1], b[:, 1:]
            keep = inp > 0                               # left padding: real input => real target
            table = net.items()
            h = net.encoder(inp, table)[keep]            # [N, d]: only real target positions
            h, out = self._logit_sides(h, table)
            if sample is None:
                return losses.softmax_ce(h, out, tgt[keep] - 1, chunk=c.loss_chunk, bf16=c.bf16)
            t = tgt[keep] - 1
            cand, logq, t_logq = sample(t)
            return losses.sampled_softmax_ce(h, out, t, cand, logq, t_logq, chunk=c.loss_chunk)

        shard = None
        if distributed.world() > 1:
            # buffers (textseq's text vectors) are the same on every rank and never change: sent once
            shard = torch.nn.parallel.DistributedDataParallel(ShardLoss(net, batch_loss),
                                                            forward_sync_buffers=False)

        def step(batch: np.ndarray) -> torch.Tensor:
            b = torch.from_numpy(batch).to(self.device)
            return batch_loss(b) if shard is None else shard(b)

        validate = training.validator(self, data, split, c.eval_users, c.seed)
        if validate is not None and shard is not None:
            validate = distributed.on_main(validate)

        self.result = training.fit_loop(
            net, opt, batches, step, validate, epochs=c.epochs, patience=c.patience,
            eval_every=c.eval_every, checkpoint_dir=self.checkpoint_dir,
            fingerprint=self._fingerprint(data), progress=progress, desc=f"{self.name} {data.name}",
            max_seconds=60.0 * c.max_minutes, batches_per_epoch=-(-len(seqs) // c.batch_size),
            lr_scale=training.lr_schedule(c.lr_schedule, c.epochs, c.warmup_epochs),
            on_validation=self.on_validation)
        if self.checkpoint_dir is not None and distributed.rank() == 0:
            training.write_history(self.result, self.checkpoint_dir, f"{self.name} on {data.name}")

    def _logit_sides(self, users: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user side, item side) whose product is the logits: raw vectors (dot), or unit vectors with
        the temperature on the user side (cosine)."""
        if self.config.similarity == "dot":
            return users, table
        return F.normalize(users, dim=-1) / self.config.temperature, F.normalize(table, dim=-1)

    # -- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """float [n_items, d]: the item table used for scoring."""
        was = self.net.training
        self.net.eval()
        table = self.net.items().detach()
        self.net.train(was)
        return table

    def diversity_vectors(self) -> tuple[np.ndarray, str]:
        return self.item_vectors().float().cpu().numpy(), f"{self.name}'s item table (the item vectors it scores with)"

    @torch.no_grad()
    def user_vectors(self, histories: list[np.ndarray], table: torch.Tensor | None = None) -> torch.Tensor:
        """float [b, d] for b histories (internal item indices; empty ones get zeros)."""
        was = self.net.training
        self.net.eval()
        table = self.item_vectors() if table is None else table
        known = [np.asarray(h, dtype=np.int64) for h in histories]
        known = [h[(h >= 0) & (h < len(table))] for h in known]
        seq = torch.from_numpy(pad_left(known, self.config.max_history)).to(self.device)
        out = self.net.encoder(seq, table)[:, -1]
        out[(seq[:, -1] == 0)] = 0.0
        self.net.train(was)
        return out

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """float32 [b, n_items]. An empty history scores items by training popularity."""
        with torch_threads(self.config.threads):
            return self._scores(histories)

    @torch.no_grad()
    def _scores(self, histories: list[np.ndarray]) -> np.ndarray:
        table = self.item_vectors()
        users, items = self._logit_sides(self.user_vectors(histories, table), table)
        scores = (users @ items.T).float().cpu().numpy()
        n = len(self.catalog)
        if scores.shape[1] < n:  # items the model has no vector for rank last
            scores = np.pad(scores, ((0, 0), (0, n - scores.shape[1])), constant_values=scores.min() - 1)
        empty = np.array([len(h) == 0 for h in histories], dtype=bool)
        if empty.any():
            pop = np.log1p(np.pad(self.popularity, (0, n - len(self.popularity))))
            scores[empty] = pop
        return scores.astype(np.float32, copy=False)

    def _search(self, hist, k, banned):
        """Above ANN_ABOVE items (and when every history is non-empty): the user vectors searched through
        an HNSW index over the item side of the logits (built once, on first use)."""
        if len(self.catalog) <= ANN_ABOVE or any(len(h) == 0 for h in hist):
            return None
        if self._ann is None or len(self._ann) != len(self.catalog):
            from .. import index
            table = self.item_vectors()
            items = self._logit_sides(table[:1], table)[1]
            self._ann_table = table  # the item table and its index, computed once, not per request
            self._ann = index.make("hnsw", "dot").add(items.float().cpu().numpy())
        table = self._ann_table
        users = self._logit_sides(self.user_vectors(hist, table), table[:1])[0]
        return self._ann.search(users.float().cpu().numpy(), k, exclude=banned)

    def explain_items(self, history: np.ndarray, items: np.ndarray) -> list[dict]:
        """The history items whose vectors are most similar (cosine) to each recommended item."""
        table = F.normalize(self.item_vectors(), dim=-1).cpu().numpy()
        h = np.asarray(history, dtype=np.int64)
        h = np.unique(h[h < len(table)][-self.config.max_history:])  # an item seen twice is one reason
        titles = self.catalog.titles()
        out = []
        for i in items:
            if len(h) == 0 or i >= len(table):
                out.append({"because": [], "reason": "popular in training" if len(h) == 0 else ""})
                continue
            s = table[h] @ table[i]
            top = np.argsort(-s, kind="stable")[:3]
            out.append({"because": [{"item_id": self.catalog.ids.id(h[j]), "title": titles[h[j]],
                                     "similarity": round(float(s[j]), 4)} for j in top]})
        return out

    # -- reporting and checkpoints -----------------------------------------------------------------
    def card_extra(self) -> dict:
        r = getattr(self, "result", None)
        return {"training": r.summary(), "loss": self.loss} if r is not None else {}

    def benchmark_extra(self) -> dict:
        r = getattr(self, "result", None)
        if r is None:
            return {}
        return {"training": r.summary(), "device": str(self.device), "loss": self.loss,
                "history": [{k: v for k, v in row.items()} for row in r.history]}

    def _save_extra(self, folder: Path) -> None:
        training.save_training_files(getattr(self, "result", None), self.checkpoint_dir, folder, self.name)

    def _state(self) -> dict[str, np.ndarray]:
        state = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        state["popularity"] = self.popularity
        return state

    def _load_state(self, state: dict[str, np.ndarray], folder: Path) -> None:
        self.device = training.device(self.config.device)
        self.popularity = state["popularity"]
        n = len(self.popularity)
        if n != len(self.catalog):
            raise LLMRecError(f"{folder}: weights for {n} items but the catalogue has {len(self.catalog)}; "
                              "the checkpoint belongs to another catalogue")
        self._build(None, n)
        training.load_net_state(self.net, state, folder)


def _fit_worker(model: SequentialRecommender, data, train, split, progress: bool) -> dict:
    """One data-parallel rank's fit (run by distributed.run): what it fitted, for the parent to adopt."""
    model._fit(data, train, split, progress and distributed.rank() == 0)
    return model._fitted()


class SASRec(SequentialRecommender):
    """ID-only SASRec with full softmax cross-entropy over all items."""

    name = "sasrec"
    Config = SASRecConfig

    def _item_module(self, data, n_items: int) -> nn.Module:
        return ItemTable(n_items, self.config.embedding_size)
