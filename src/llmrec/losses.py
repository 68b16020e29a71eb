"""Full softmax cross-entropy over a whole item table, computed in row chunks.

``F.cross_entropy(h @ table.T, target)`` materialises a [N, n_items] logit matrix and its gradient: for
ml-1m (N ~ 25k positions a batch, 3.7k items) that is 380 MB written and read several times a step, and
the step is bound by memory traffic, not arithmetic. ``softmax_ce`` streams the same computation over
chunks of rows that stay in cache, recomputing each chunk's logits in the backward pass instead of
storing them. Same loss and gradients (tested against ``F.cross_entropy``), about half the time on CPU.

``bf16=True`` does the two matrix products of each chunk in bfloat16 (accumulating the item-table
gradient in float32); on CPUs with native bfloat16 (AVX512-BF16 / AMX) they run ~2.5x faster, on others
they are slower, so it is off by default.

``sampled_softmax_ce`` is the large-catalogue loss (as HSTU and eSASRec train): each position's positive
against a candidate set shared by the batch (``NegativeSampler``: the batch's positives plus uniformly or
popularity-sampled items), every logit corrected by the log of its candidate's expected count (logQ), and
a candidate equal to the row's positive left out. Its cost is the candidate set's size, not the catalogue's.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import LLMRecError


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, target: torch.Tensor, chunk: int, bf16: bool):
        dt = torch.bfloat16 if bf16 else h.dtype
        hc, wc = h.to(dt), table.to(dt)
        n = h.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, n, chunk):
            logits = (hc[s:s + chunk] @ wc.T).float()
            lse_c = torch.logsumexp(logits, 1)
            lse[s:s + chunk] = lse_c
            total += (lse_c - logits.gather(1, target[s:s + chunk, None]).squeeze(1)).sum()
        ctx.save_for_backward(hc, wc, target, lse)
        ctx.chunk, ctx.dtypes = chunk, (h.dtype, table.dtype)
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hc, wc, target, lse = ctx.saved_tensors
        n, chunk = hc.shape[0], ctx.chunk
        gh = torch.empty(hc.shape, dtype=ctx.dtypes[0], device=hc.device)
        gw = torch.zeros(wc.shape, dtype=torch.float32, device=hc.device)
        scale = grad.float() / max(n, 1)
        for s in range(0, n, chunk):
            p = (hc[s:s + chunk] @ wc.T).float()
            p.sub_(lse[s:s + chunk, None]).exp_()                      # softmax
            p[torch.arange(p.shape[0], device=p.device), target[s:s + chunk]] -= 1.0
            p.mul_(scale)
            pc = p.to(wc.dtype)
            gh[s:s + chunk] = (pc @ wc).to(gh.dtype)
            if pc.dtype == torch.float32:
                gw.addmm_(pc.T, hc[s:s + chunk])
            else:
                gw += (pc.T @ hc[s:s + chunk]).float()
        return gh, gw.to(ctx.dtypes[1]), None, None, None


def softmax_ce(h: torch.Tensor, table: torch.Tensor, target: torch.Tensor, chunk: int = 256,
               bf16: bool = False) -> torch.Tensor:
    """Mean cross-entropy of softmax(h @ table.T) against ``target``.

    h float [N, d] (one row per position), table float [n_items, d], target int64 [N] in [0, n_items).
    chunk: rows per chunk (0 = one plain ``F.cross_entropy``, materialising all logits).
    """
    if chunk <= 0 or h.device.type != "cpu":
        logits = h @ table.T
        return torch.nn.functional.cross_entropy(logits.float(), target)
    return _ChunkedSoftmaxCE.apply(h, table, target, chunk, bf16)


# -- sampled softmax ------------------------------------------------------------------------------------
def sampled_softmax_ce(h: torch.Tensor, table: torch.Tensor, target: torch.Tensor, candidates: torch.Tensor,
                       logq: torch.Tensor, target_logq: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Mean cross-entropy of each row's positive against a shared candidate set, with the logQ correction.

    h float [N, d], table float [n_items, d], target int64 [N]; candidates int64 [C]: the negatives shared
    by every row (in-batch positives and sampled items; duplicates allowed); logq float [C]: log of each
    candidate's expected count in the candidate set, target_logq float [N]: the same for each row's
    positive. Row i's logits are ``h_i . w_j - logq_j`` for its positive and every candidate, a candidate
    equal to the row's positive (an accidental hit) left out; loss_i = logsumexp(logits_i) - positive_i.
    Computed over chunks of ``chunk`` rows whose [chunk, C] logits are recomputed in the backward pass
    (torch.utils.checkpoint), so memory is one chunk's logits, not N x C.
    """
    from torch.utils.checkpoint import checkpoint
    n = h.shape[0]
    w = table[candidates]                                              # [C, d]
    pos = (h * table[target]).sum(-1) - target_logq                     # [N]
    chunk = n if chunk <= 0 else chunk
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk):
        part = (h[s:s + chunk], pos[s:s + chunk], w, logq, target[s:s + chunk], candidates)
        if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
            total = total + checkpoint(_sampled_chunk, *part, use_reentrant=False)
        else:
            total = total + _sampled_chunk(*part)
    return total / max(n, 1)


def _sampled_chunk(h, pos, w, logq, target, candidates) -> torch.Tensor:
    logits = (h @ w.T).float() - logq                                  # [c, C]
    logits = logits.masked_fill(target[:, None] == candidates[None, :], float("-inf"))
    lse = torch.logsumexp(torch.cat([pos.float()[:, None], logits], 1), 1)
    return (lse - pos.float()).sum()


class NegativeSampler:
    """The candidate set of one batch for ``sampled_softmax_ce``: the batch's distinct positives (in-batch
    negatives, when ``in_batch``) plus ``negatives`` items drawn with replacement from ``sampler``
    (``uniform`` over the catalogue or ``popularity``: proportional to training counts), shared by every
    row, with each candidate's log expected count in the set (the logQ correction).

    Expected count of item j: P(j among the batch's distinct positives) + negatives * q_j, where the
    positives of a batch of N are taken as N independent draws from the training popularity p, so
    P = 1 - (1 - p_j)^N; q is the sampler's distribution. Draws use torch's global generator (saved in
    the training state, so a resumed run draws the same candidates).
    """

    def __init__(self, popularity: np.ndarray, negatives: int, sampler: str = "uniform",
                 in_batch: bool = True, device: torch.device | str = "cpu"):
        counts = torch.as_tensor(np.asarray(popularity, np.float64), device=device)
        if counts.sum() <= 0:
            raise LLMRecError("sampled softmax needs training interactions (all item counts are zero)")
        self.n_items, self.negatives, self.in_batch = len(counts), int(negatives), in_batch
        self.p = counts / counts.sum()                                  # positives' distribution
        if sampler == "uniform":
            self.q = torch.full_like(self.p, 1.0 / self.n_items)
        elif sampler == "popularity":
            self.q = self.p.clone()
        else:
            raise LLMRecError(f"unknown sampler {sampler!r}: choose uniform or popularity")
        self.uniform, self.q32 = sampler == "uniform", self.q.float()
        if self.negatives < 0 or (self.negatives == 0 and not in_batch):
            raise LLMRecError(f"negatives must be positive (or 0 with in-batch negatives), got {negatives}")

    def expected_log_count(self, items: torch.Tensor, n_positives: int) -> torch.Tensor:
        """float32 log of each item's expected count in a batch's candidate set (clamped at 1e-30)."""
        e = self.negatives * self.q[items]
        if self.in_batch:
            e = e - torch.expm1(n_positives * torch.log1p(-self.p[items].clamp(max=1 - 1e-12)))
        return torch.log(e.clamp(min=1e-30)).float()

    def __call__(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """target int64 [N] -> (candidates int64 [C], logq float [C], target_logq float [N])."""
        parts = [torch.unique(target)] if self.in_batch else []
        if self.negatives:
            if self.uniform:
                drawn = torch.randint(0, self.n_items, (self.negatives,), device=target.device)
            else:
                drawn = torch.multinomial(self.q32, self.negatives, replacement=True)
            parts.append(drawn)
        cand = torch.cat(parts)
        n = len(target)
        return cand, self.expected_log_count(cand, n), self.expected_log_count(target, n)
