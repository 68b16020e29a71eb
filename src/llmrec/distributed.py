"""Data-parallel training in worker processes: torch DistributedDataParallel over gloo (CPU).

``run(fn, workers, *args)`` starts ``workers`` processes (torch.multiprocessing spawn), joins them in
one process group (a file rendezvous in a temporary folder, so no port is chosen) and returns what
``fn`` returned on rank 0. ``run(..., engine="ray")`` does the same through Ray Train's TorchTrainer (a
local Ray, or the one already initialised, with its run folder on this machine's disk), rank 0's value
coming back as its Ray checkpoint. Inside a
worker, ``rank()`` / ``world()`` say where it is, ``on_main(fn)`` runs ``fn`` on rank 0 and gives its
float to every rank, and ``main_says(flag)`` gives rank 0's flag to every rank (the training loop's time
budget and early stopping must decide the same on every rank, or the next gradient all-reduce waits
forever). Outside a worker they are the one-process answers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .errors import LLMRecError

RESULT_FILE = "rank0.pt"


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def main_says(flag: bool) -> bool:
    """Rank 0's ``flag``, on every rank."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, 0)
    return bool(t.item())


def on_main(fn: Callable[[], float]) -> Callable[[], float]:
    """``fn`` run on rank 0 only; every rank gets its value."""
    def wrapped() -> float:
        if not active():
            return float(fn())
        t = torch.tensor([float(fn()) if rank() == 0 else 0.0], dtype=torch.float64)
        dist.broadcast(t, 0)
        return float(t.item())
    return wrapped


def sum_all(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks (a new tensor; ``t`` itself when there is one process)."""
    if not active():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def run(fn: Callable[..., Any], workers: int, *args: Any, engine: str = "local") -> Any:
    """``fn(*args)`` in ``workers`` processes joined in a gloo process group; rank 0's return value.
    An LLMRecError raised in a worker is raised here unchanged."""
    if engine == "ray":
        return _run_ray(fn, workers, args)
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory(prefix="llmrec-ddp-") as tmp:
        try:
            mp.spawn(_worker, args=(workers, tmp, fn, args), nprocs=workers, join=True)
        except Exception as e:
            for err in sorted(Path(tmp).glob("error*.pkl")):
                raise pickle.loads(err.read_bytes()) from None
            raise LLMRecError(f"a training worker failed: {str(e).strip().splitlines()[-1]}") from e
        return torch.load(Path(tmp) / RESULT_FILE, map_location="cpu", weights_only=False)


def _worker(r: int, workers: int, tmp: str, fn: Callable[..., Any], args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=r, world_size=workers)
    try:
        out = fn(*args)
        if r == 0:
            torch.save(out, Path(tmp) / RESULT_FILE)
    except LLMRecError as e:
        (Path(tmp) / f"error{r}.pkl").write_bytes(pickle.dumps(e))
        raise
    finally:
        dist.destroy_process_group()


def _run_ray(fn: Callable[..., Any], workers: int, args: tuple) -> Any:
    from .batch import connect
    ray, started = connect()
    try:
        from ray.train import Checkpoint, RunConfig, ScalingConfig, WorkerGroupError
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError:
        raise LLMRecError("engine=ray needs Ray Train: pip install 'llmrec[ray]'") from None

    cwd = os.getcwd()

    def loop(_config) -> None:
        import ray.train
        if os.path.isdir(cwd):  # Ray may start a worker elsewhere; relative checkpoint folders mean here
            os.chdir(cwd)
        out = fn(*args)
        with tempfile.TemporaryDirectory() as d:
            if rank() == 0:
                torch.save(out, Path(d) / RESULT_FILE)
            ray.train.report({}, checkpoint=Checkpoint.from_directory(d) if rank() == 0 else None)

    try:
        with tempfile.TemporaryDirectory(prefix="llmrec-ray-train-") as tmp:
            # rank 0 hands its result back through Ray Train's storage: a local folder on one machine; on a
            # cluster of several nodes a shared one (NFS, s3://...), named by LLMREC_RAY_STORAGE
            storage = os.environ.get("LLMREC_RAY_STORAGE") or tmp
            trainer = TorchTrainer(loop, torch_config=TorchConfig(backend="gloo"),
                                   scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
                                   run_config=RunConfig(storage_path=storage, name=f"fit-{uuid.uuid4().hex[:12]}"))
            try:
                result = trainer.fit()
            except WorkerGroupError as e:
                for r in sorted(e.worker_failures):
                    err = e.worker_failures[r]
                    while err is not None and not isinstance(err, LLMRecError):
                        err = err.__cause__
                    if err is not None:
                        raise err from None
                raise LLMRecError(f"a Ray Train worker failed: {str(e).strip().splitlines()[-1]}") from e
            with result.checkpoint.as_directory() as d:
                return torch.load(Path(d) / RESULT_FILE, map_location="cpu", weights_only=False)
    finally:
        if started:
            ray.shutdown()
