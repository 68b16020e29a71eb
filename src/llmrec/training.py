"""Shared torch training utilities: device, seeds, the epoch loop with validation-driven early stopping,
resume from a checkpoint folder, the per-epoch history and its PNG curve.

One loop for every trained model: a model supplies ``batches(epoch)`` (an iterable of batches),
``step(batch) -> loss`` (a scalar tensor) and ``validate() -> float`` (validation NDCG@10); the loop does
the optimiser steps, the progress bar, early stopping, keeping the best weights and resuming.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .config import to_dict
from .errors import LLMRecError

RESUME_FILE = "train_state.pt"
HISTORY_FILE = "training_history.json"
CURVE_FILE = "training_curve.png"


def device(name: str = "auto") -> torch.device:
    """``auto``: cuda when present, else cpu; or an explicit torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise LLMRecError(f"unknown device {name!r}: {e}") from None


def load_net_state(module: torch.nn.Module, state: dict[str, np.ndarray], folder: str | Path) -> None:
    """A checkpoint's ``net.<name>`` arrays into ``module``, which is then in eval mode; weights that do not
    fit it (a checkpoint of another config) are refused naming ``folder``."""
    try:
        module.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in state.items() if k.startswith("net.")})
    except RuntimeError as e:
        raise LLMRecError(f"{folder}: weights do not fit this model's config ({e})") from None
    module.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def windows(history: np.ndarray, size: int, count: int = 0) -> list[np.ndarray]:
    """The history cut into windows of ``size`` items from the newest backwards, consecutive windows
    sharing one item (so every transition is trained once): the newest ``count`` of them (0 = all)."""
    out, end = [], len(history)
    while end > 0 and (count == 0 or len(out) < count):
        out.append(history[max(0, end - size):end])
        if end <= size:
            break
        end -= size - 1
    return out


@dataclass
class LoopResult:
    """What the loop did: per-epoch rows ({epoch, loss, valid_ndcg10, seconds}), the best epoch and score,
    whether it stopped early, and the mean and total seconds of training epochs (validation excluded; the
    total counts every call of a resumed run). A row with ``partial: true`` is an epoch the time budget
    cut after ``batches`` batches (left out of the mean; a resumed run finishes it)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    stopped_early: bool = False
    out_of_time: bool = False
    resumed_from: int = 0

    @property
    def seconds_per_epoch(self) -> float:
        secs = [r["train_seconds"] for r in self.history if not r.get("partial")]
        return float(np.mean(secs)) if secs else 0.0

    def summary(self) -> dict[str, Any]:
        return {"epochs_run": len(self.history), "best_epoch": self.best_epoch,
                "best_valid_ndcg10": round(self.best_score, 4) if math.isfinite(self.best_score) else None,
                "stopped_early": self.stopped_early, "out_of_time": self.out_of_time,
                "seconds_per_epoch": round(self.seconds_per_epoch, 2),
                "train_seconds": round(sum(r["train_seconds"] for r in self.history), 1),
                "resumed_from_epoch": self.resumed_from}


def fingerprint(model, data, free: tuple[str, ...] = ()) -> dict:
    """What a training state must match to resume: the model's name and config (less the ``free`` keys,
    which a resumed run may change) and the data set's identity."""
    cfg = {k: v for k, v in to_dict(model.config).items() if k not in free}
    return {"model": model.name, **cfg, "dataset": data.name, "n_items": data.n_items, "n_users": data.n_users}


def validator(model, data, split, eval_users: int = 0, seed: int = 0, before=None):
    """A function returning ``model``'s validation NDCG@10 (all validation users, or a fixed random sample
    of ``eval_users``), or None when there is no validation split. ``before`` runs first (e.g. re-encode)."""
    if split is None or not len(split.valid_users):
        return None
    users = split.valid_users
    if eval_users and eval_users < len(users):
        users = np.random.default_rng(seed).choice(users, eval_users, replace=False)

    def validate() -> float:
        from .evaluate import evaluate
        if before is not None:
            before()
        return evaluate(model, split, data.n_users, data.n_items, ks=(10,), stage="valid", users=users,
                        progress=False).metrics["NDCG@10"]
    return validate


def lr_schedule(kind: str, epochs: int, warmup_epochs: int = 0) -> Callable[[int], float]:
    """Learning-rate factor per epoch: linear warm-up over ``warmup_epochs``, then ``constant`` or
    ``cosine`` (half a cosine from 1 down to 0.01 at the last of ``epochs``)."""
    if kind not in ("constant", "cosine"):
        raise LLMRecError(f"unknown lr_schedule {kind!r}: choose constant or cosine")

    def scale(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        if kind == "constant":
            return 1.0
        t = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs - 1)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return scale


def fit_loop(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
             batches: Callable[[int], Iterable], step: Callable[[Any], torch.Tensor],
             validate: Callable[[], float] | None, *, epochs: int, patience: int = 10,
             eval_every: int = 1, checkpoint_dir: str | Path | None = None,
             fingerprint: dict | None = None, progress: bool = True, desc: str = "train",
             grad_clip: float = 0.0, max_seconds: float = 0.0,
             lr_scale: Callable[[int], float] | None = None,
             batches_per_epoch: int | None = None,
             on_validation: Callable[[int, float], None] | None = None) -> LoopResult:
    """Train ``module`` for up to ``epochs`` epochs and leave it holding its best weights.

    batches(epoch): the epoch's batches (shuffle with a seed derived from the epoch, so a resumed run sees
    the same batches). step(batch): the mean loss of one batch. validate(): validation NDCG@10 (higher is
    better), called every ``eval_every`` epochs and after the last one; ``None`` trains all epochs and keeps
    the last weights. Early stopping: stop after ``patience`` validations without improvement.
    checkpoint_dir: when set, the full training state is saved there after each epoch and a run started
    with the same ``fingerprint`` (config + data identity) resumes from it.
    max_seconds: a wall-clock budget for this call (0 = none), checked between batches: when it runs out
    inside an epoch the loop stops there, validates once if no validation has happened yet, keeps the
    best weights so far and saves its state; a resumed run continues that epoch at the next batch.
    batches_per_epoch: the length of the per-batch progress bar (None: no total).
    lr_scale(epoch): a factor on each parameter group's initial learning rate for that (0-based) epoch,
    e.g. ``lr_schedule(...)``; a function of the epoch alone, so a resumed run continues the schedule.
    on_validation(epoch, score): called after each validation (1-based epoch) once the epoch's state is
    saved; it may raise to abandon training (a hyper-parameter search pruning a poor trial), and the
    exception propagates to the caller.
    In a data-parallel worker (llmrec.distributed) every rank runs this loop on its own share of each
    batch: the time budget is rank 0's clock, ``validate`` must give every rank the same score (e.g.
    ``distributed.on_main``), and only rank 0 writes the training state.
    """
    t_start = time.perf_counter()

    def out_of_budget() -> bool:
        return distributed.main_says(time.perf_counter() - t_start > max_seconds)
    res = LoopResult()
    best_state = None
    bad = 0
    start = 0
    ck = Path(checkpoint_dir) / RESUME_FILE if checkpoint_dir is not None else None
    fingerprint = json.loads(json.dumps(fingerprint or {}))
    if ck is not None and ck.exists():
        saved = torch.load(ck, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") != fingerprint:
            raise LLMRecError(f"{ck}: training state from another config or data set "
                              f"({_diff(saved.get('fingerprint') or {}, fingerprint)}); "
                              "delete it or train into another folder")
        module.load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        res = LoopResult(**saved["result"])
        best_state, bad, start = saved["best_state"], saved["bad"], saved["epoch"]
        res.resumed_from, res.out_of_time = start, False
        torch.set_rng_state(saved["torch_rng"])
        done_batches, partial, carry_s = saved.get("batch", 0), saved.get("partial", (0.0, 0)), 0.0
        if res.history and res.history[-1].get("partial"):  # the epoch the budget cut: finished below
            carry_s = res.history.pop()["train_seconds"]
    else:
        done_batches, partial, carry_s = 0, (0.0, 0), 0.0
    if start >= epochs or res.stopped_early:
        if best_state is not None:
            module.load_state_dict(best_state)
        return res
    bar = tqdm(range(start, epochs), desc=desc, unit="epoch", disable=not progress, initial=start,
               total=epochs)
    base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["initial_lr"] = lr
    for epoch in bar:
        module.train()
        if lr_scale is not None:
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * lr_scale(epoch)
        t0 = time.perf_counter()
        total, n = partial if epoch == start else (0.0, 0)
        skip = done_batches if epoch == start else 0
        inner = tqdm(total=batches_per_epoch, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                     disable=not progress, initial=skip)
        cut, j, stepped = False, 0, 0
        for j, batch in enumerate(batches(epoch)):
            if j < skip:  # done before the budget of an earlier run ran out
                continue
            if max_seconds > 0 and stepped and out_of_budget():
                cut = True
                break
            stepped += 1
            optimizer.zero_grad(set_to_none=True)
            loss = step(batch)
            if not torch.isfinite(loss):
                raise LLMRecError(f"training diverged at epoch {epoch + 1}: loss is {loss.item()}; "
                                  "lower learning_rate")
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
            optimizer.step()
            total += float(loss.detach())
            n += 1
            inner.update()
            if n % 20 == 0:
                inner.set_postfix(loss=f"{total / n:.4f}")
        inner.close()
        train_s = time.perf_counter() - t0 + (carry_s if epoch == start else 0.0)
        row = {"epoch": epoch + 1, "loss": round(total / max(n, 1), 5), "train_seconds": round(train_s, 2)}
        if cut:
            row.update(partial=True, batches=j)
        last = epoch + 1 == epochs and not cut
        due = (epoch + 1) % eval_every == 0 or last
        if validate is not None and ((due and not cut) or (cut and best_state is None)):
            module.eval()
            with torch.no_grad():
                score = float(validate())
            row["valid_ndcg10"] = round(score, 5)
            if score > res.best_score:
                res.best_score, res.best_epoch, bad = score, epoch + 1, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                bad += 1
        res.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", ndcg10=f"{row.get('valid_ndcg10', float('nan')):.4f}",
                        best=f"{res.best_score:.4f}@{res.best_epoch}")
        stop = validate is not None and bad >= patience and not cut
        res.stopped_early = stop and not last
        if cut or (max_seconds > 0 and out_of_budget() and not last and not stop):
            res.out_of_time = stop = True
        if ck is not None and distributed.rank() == 0:
            ck.parent.mkdir(parents=True, exist_ok=True)
            tmp = ck.with_suffix(".tmp")
            torch.save({"fingerprint": fingerprint, "module": module.state_dict(),
                        "optimizer": optimizer.state_dict(), "best_state": best_state, "bad": bad,
                        "epoch": epoch + 1 - cut, "batch": j if cut else 0,
                        "partial": (total, n) if cut else (0.0, 0), "torch_rng": torch.get_rng_state(),
                        "result": {k: v for k, v in res.__dict__.items() if k != "resumed_from"}}, tmp)
            tmp.replace(ck)
            write_history(res, ck.parent)
        if on_validation is not None and "valid_ndcg10" in row:
            on_validation(epoch + 1, row["valid_ndcg10"])
        if stop:
            break
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return res


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys[:4]) or "unknown difference"


def write_history(res: LoopResult | list[dict], folder: str | Path, title: str = "") -> None:
    """``training_history.json`` and ``training_curve.png`` (loss and validation NDCG@10 per epoch)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = res.history if isinstance(res, LoopResult) else res
    payload = {"history": rows, **(res.summary() if isinstance(res, LoopResult) else {})}
    (folder / HISTORY_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    if rows:
        plot_curve(rows, folder / CURVE_FILE, title)


def save_training_files(result: LoopResult | None, checkpoint_dir: str | Path | None, folder: str | Path,
                        title: str = "") -> None:
    """Into a checkpoint being built in ``folder``: the history and curve of ``result``, and the resume state
    (and, for a model loaded from its checkpoint folder, its history and curve) carried over from the
    training folder ``checkpoint_dir``, which the saved checkpoint may replace."""
    import shutil
    folder = Path(folder)
    if result is not None:
        write_history(result, folder, title)
    if checkpoint_dir is not None:
        src = Path(checkpoint_dir)
        for name in (RESUME_FILE, HISTORY_FILE, CURVE_FILE):
            if (src / name).exists() and not (folder / name).exists():
                shutil.copy2(src / name, folder / name)


def plot_curve(rows: list[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(ep, [r["loss"] for r in rows], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    val = [(r["epoch"], r["valid_ndcg10"]) for r in rows if "valid_ndcg10" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in val], [v for _, v in val], color="tab:orange", marker=".")
        ax2.set_ylabel("validation NDCG@10", color="tab:orange")
    ax.set_title(title or "training curve")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
