"""Batch recommendation: top-k for every known user of a checkpoint (or a list of users), written as Parquet
with ``user_id, rank, item_id, score`` (and ``reason``, a JSON string, when explained).

The users are cut into chunks of ``chunk_size``; chunk i becomes ``part-0000i.parquet`` in the output
folder, written under a temporary name and renamed, so a killed run leaves only whole part files. The folder
also holds ``_job.json`` (the checkpoint, k, explain, the users and the chunk size): a run whose job is the
same resumes, computing only the missing chunks; a folder holding another job's results is refused unless
``overwrite``. An output named ``*.parquet`` is one file: the parts are kept in a hidden sibling folder
(``.NAME.parts``) while the run lasts and joined into the file (written atomically) at the end.

Two engines write the same part files: ``local`` (this process) and ``ray`` (Ray Data: the chunks as a
dataset, ``map_batches`` over a pool of actors that each load the checkpoint once). ``pd.read_parquet`` on
the folder reads the parts in order (files starting with ``_`` or ``.`` are skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np

from .config import json_default, usable_cores
from .errors import DataError, LLMRecError

ENGINES = ("local", "ray")
CHUNK_SIZE = 1000
JOB_FILE = "_job.json"
CONNECT_TRIES = 3  # seconds' worth of attempts to reach a cluster's GCS before failing


# -- the job: users, identity, output folder ----------------------------------------------------------
def read_users(path: str | Path, known) -> list[str]:
    """User ids from ``path``, one per line (blank lines skipped); an id the checkpoint does not know, or
    one listed twice, is refused naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the user list ({e})", path=str(path)) from None
    users, first = [], {}
    for n, line in enumerate(lines, 1):
        uid = line.strip()
        if not uid:
            continue
        if uid not in known:
            raise DataError(f"unknown user {uid!r} (the checkpoint knows {len(known):,} users)", path=str(path),
                            line=n)
        if uid in first:
            raise DataError(f"user {uid!r} listed twice (first on line {first[uid]})", path=str(path), line=n)
        first[uid] = n
        users.append(uid)
    if not users:
        raise DataError("no user ids (one per line expected)", path=str(path))
    return users


def _checkpoint_key(model_dir: Path) -> str:
    """What identifies a checkpoint's contents: its config (users included) and its state file's size and
    modification time (hashing gigabytes of weights would cost more than a chunk)."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    st = (model_dir / "state.safetensors").stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def job_spec(model_dir: Path, users: list[str], k: int, explain: bool, chunk_size: int) -> dict:
    return {"model_dir": str(model_dir.resolve()), "checkpoint": _checkpoint_key(model_dir), "k": k,
            "explain": explain, "chunk_size": chunk_size, "users": len(users),
            "users_sha256": hashlib.sha256("\n".join(users).encode()).hexdigest()[:16]}


def part_name(chunk: int) -> str:
    return f"part-{chunk:05d}.parquet"


def _ours(name: str) -> bool:
    """A file a batch run writes into its folder: a part, a part being written, or the job file."""
    return (name == JOB_FILE or name.startswith(f".{JOB_FILE}.")
            or (name.startswith(("part-", ".part-")) and ".parquet" in name))


def prepare(parts: Path, job: dict, overwrite: bool, out: Path) -> set[int]:
    """Make ``parts`` ready for ``job``: the chunks already finished (same job: resumed), or none (a new
    folder, or ``overwrite``). Another job's results are refused unless ``overwrite``; files a batch run
    did not write are never deleted."""
    parts.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in parts.iterdir()]
    foreign = sorted(n for n in names if not _ours(n))
    if foreign:
        raise LLMRecError(f"{out}: the folder holds files that are not batch results (e.g. {foreign[0]}); "
                          "choose an empty or new folder")
    for n in names:  # a part (or the job file) a killed run was writing
        if n.startswith("."):
            (parts / n).unlink()
    old = None
    if JOB_FILE in names:
        try:
            old = json.loads((parts / JOB_FILE).read_text())
        except json.JSONDecodeError:
            old = {}
    has_parts = any(n.startswith("part-") for n in names)
    if (old is not None or has_parts) and old != job:
        if not overwrite:
            diff = sorted(key for key in job if (old or {}).get(key) != job[key])
            raise LLMRecError(f"{out}: already holds results of another job (differs in: {', '.join(diff)}); "
                              "pass --overwrite to replace them")
        for n in names:
            if n.startswith("part-") or n == JOB_FILE:
                (parts / n).unlink()
        names = []
    _atomic_write_text(parts / JOB_FILE, json.dumps(job, indent=1) + "\n")
    return {int(n[5:10]) for n in names if n.startswith("part-") and n.endswith(".parquet")}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- one chunk ----------------------------------------------------------------------------------------
def chunk_table(model, users: list[str], k: int, explain: bool):
    """The rows of ``users``' top-k as a pyarrow Table (``schema_for(explain)``), users in the given order,
    best item first; a user with fewer than k recommendable items gets fewer rows."""
    import pyarrow as pa

    from .evaluate import block_users
    step = max(1, min(len(users), block_users(len(model.catalog))))
    cols: dict[str, list] = {"user_id": [], "rank": [], "item_id": [], "score": [], "reason": []}
    for s in range(0, len(users), step):
        block = users[s:s + step]
        recs = model.recommend(users=block, k=k, explain=explain)
        for b, uid in enumerate(block):
            ok = [j for j, iid in enumerate(recs.item_ids[b]) if iid is not None]
            cols["user_id"] += [uid] * len(ok)
            cols["rank"] += range(1, len(ok) + 1)
            cols["item_id"] += [recs.item_ids[b][j] for j in ok]
            cols["score"] += [recs.scores[b][j] for j in ok]
            if explain:
                cols["reason"] += [json.dumps(recs.explanations[b][j], ensure_ascii=False, default=json_default)
                                   for j in ok]
    if not explain:
        del cols["reason"]
    schema = schema_for(explain)
    return pa.table({name: pa.array(cols[name], type=schema.field(name).type) for name in schema.names},
                    schema=schema)


def schema_for(explain: bool):
    import pyarrow as pa
    fields = [("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())]
    return pa.schema(fields + ([("reason", pa.string())] if explain else []))


def write_part(table, parts: Path, chunk: int, **options) -> Path:
    """``table`` as ``parts/part-CHUNK.parquet``, written under a temporary name and renamed; ``options``
    go to ``pyarrow.parquet.write_table``."""
    import pyarrow.parquet as pq
    final = parts / part_name(chunk)
    tmp = parts / f".{final.name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp, **options)
    os.replace(tmp, final)
    return final


class ChunkWriter:
    """Loads the checkpoint once; called on a batch of chunks (``chunk``: indices, ``users``: JSON lists of
    user ids), writes each chunk's part file and returns the chunks and their row counts. Ray Data runs it
    as a stateful actor; the local engine calls it directly."""

    def __init__(self, model_dir: str, parts: str, k: int, explain: bool, threads: int | None = None):
        from .models import load_model
        if threads:
            _limit_threads(threads)
        self.model = load_model(model_dir)
        if threads and "torch" in sys.modules:  # a model that scores with torch imported it
            sys.modules["torch"].set_num_threads(threads)
        self.parts, self.k, self.explain = Path(parts), k, explain

    def __call__(self, batch: dict) -> dict:
        rows = []
        for chunk, users in zip(batch["chunk"], batch["users"]):
            table = chunk_table(self.model, json.loads(users), self.k, self.explain)
            write_part(table, self.parts, int(chunk))
            rows.append(table.num_rows)
        return {"chunk": np.asarray(batch["chunk"], np.int64), "rows": np.asarray(rows, np.int64)}


def _limit_threads(n: int) -> None:
    """At most ``n`` threads for the BLAS / OpenMP pools of this process (a Ray actor given one CPU)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n)


# -- the engines --------------------------------------------------------------------------------------
def _run_local(todo: list[tuple[int, list[str]]], model_dir: Path, parts: Path, k: int, explain: bool,
               progress: bool) -> None:
    from tqdm.auto import tqdm
    writer = ChunkWriter(str(model_dir), str(parts), k, explain)
    for chunk, users in tqdm(todo, desc="batch recommend", unit="chunk", disable=not progress):
        writer({"chunk": [chunk], "users": [json.dumps(users)]})


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise LLMRecError("--engine ray needs the 'ray' extra: pip install 'llmrec[ray]'") from None
    return ray


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A cluster address (``host:port`` or ``ray://host:port``) must accept a connection within
    ``timeout`` seconds: ray.init would otherwise wait far longer before failing."""
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise LLMRecError(f"--address: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise LLMRecError(f"cannot reach a Ray cluster at {address} ({e})") from None


def connect(address: str | None = None, num_cpus: int | None = None):
    """Ray, started or joined: an already initialised Ray is used as it is; ``None`` starts a local Ray on
    ``num_cpus`` (default: this machine's cores); ``auto`` joins the cluster running here, ``HOST:PORT``
    or ``ray://HOST:PORT`` a remote one (refused within seconds when unreachable). Returns (ray, whether
    this call started it, so that the caller shuts it down). With no ``address``, Ray's own ``RAY_ADDRESS``
    is honoured (``ray job submit`` sets it), so a stage started on a cluster joins that cluster."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    if address in (None, ""):
        address = os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in (None, "", "local"):
        kwargs["num_cpus"] = num_cpus or usable_cores()
    else:
        if num_cpus:
            raise LLMRecError("--num-cpus applies to a local Ray; a cluster has its own (omit --address)")
        if address != "auto":
            _check_reachable(address)
        kwargs["address"] = address
    # something that answers on the port but is not Ray: give up after a few tries, not Ray's 20 s
    wait_key = "RAY_gcs_server_port_wait_time_s"
    set_wait = "address" in kwargs and wait_key not in os.environ
    if set_wait:
        os.environ[wait_key] = str(CONNECT_TRIES)
    try:
        ray.init(**kwargs)
    except ValueError as e:  # ray:// without Ray Client's packages
        if "ray[client]" not in str(e):
            raise
        raise LLMRecError(f"--address {address}: a ray:// address needs Ray Client: pip install 'ray[client]' "
                          "(or join with HOST:PORT of the head node, or auto on a cluster node)") from None
    except (ConnectionError, TimeoutError, RuntimeError) as e:
        raise LLMRecError(f"cannot start or join Ray (address {address or 'local'}): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        if set_wait:
            del os.environ[wait_key]
    return ray, True


def run_on_ray(rows: list[dict], actor, kwargs: dict, *, address: str | None, num_cpus: int | None,
               workers: int | None, progress: bool) -> tuple[int, list[dict]]:
    """``rows`` (one per chunk; strings and numbers) through ``map_batches(actor)`` on a pool of actors,
    one CPU and one BLAS / torch thread each (``actor(**kwargs, threads=1)`` is built once per actor, then
    called on one row at a time). Ray is started or joined as ``connect`` does, and shut down after if
    this call started it. Returns (the actors used, the rows the actors returned)."""
    ray, started = connect(address, num_cpus)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.print_on_execution_start = False
        if not progress:
            import logging
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        n = min(n, len(rows))
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(actor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=1,
                            fn_constructor_kwargs={**kwargs, "threads": 1})
        return n, ds.take_all()
    finally:
        if started:
            ray.shutdown()


def _run_ray(todo: list[tuple[int, list[str]]], model_dir: Path, parts: Path, k: int, explain: bool,
             progress: bool, address: str | None, num_cpus: int | None, workers: int | None) -> int:
    n, out = run_on_ray([{"chunk": c, "users": json.dumps(u)} for c, u in todo], ChunkWriter,
                        {"model_dir": str(model_dir.resolve()), "parts": str(parts.resolve()), "k": k,
                         "explain": explain}, address=address, num_cpus=num_cpus, workers=workers,
                        progress=progress)
    check_done({c for c, _ in todo}, out)
    return n


def check_done(todo: set[int], returned: list[dict]) -> None:
    """Every chunk of ``todo`` came back from the actors (else the run must be resumed)."""
    missing = sorted(todo - {int(r["chunk"]) for r in returned})
    if missing:
        raise LLMRecError(f"Ray finished without chunks {missing[:5]}; run again to resume")


# -- the API ------------------------------------------------------------------------------------------
def recommend(model_dir: str | Path, out: str | Path, *, k: int = 10, users: str | Path | list[str] | None = None,
              explain: bool = False, engine: str = "local", address: str | None = None,
              num_cpus: int | None = None, workers: int | None = None, chunk_size: int = CHUNK_SIZE,
              overwrite: bool = False, progress: bool = False) -> dict:
    """Top-``k`` for every known user of the checkpoint ``model_dir`` (or ``users``: a file of ids, one
    per line, or a list) into ``out`` (a folder of part files, or one ``*.parquet`` file); resumes the same
    job, refuses another's results unless ``overwrite``. ``engine``: ``local`` or ``ray`` (``address``,
    ``num_cpus``, ``workers`` as ``connect`` and the actor pool take them). Returns a summary."""
    from .data import IdMap
    from .models.base import read_meta
    if engine not in ENGINES:
        raise LLMRecError(f"unknown engine {engine!r}; valid choices: {', '.join(ENGINES)}")
    if k < 1:
        raise LLMRecError(f"k must be at least 1, got {k}")
    if chunk_size < 1:
        raise LLMRecError(f"chunk size must be at least 1, got {chunk_size}")
    if engine == "ray":
        _import_ray()  # before any work
    model_dir = Path(model_dir)
    known = IdMap(read_meta(model_dir)["users"], kind="user")
    if isinstance(users, (str, Path)):
        chosen = read_users(users, known)
    elif users is not None:
        chosen = [str(u) for u in users]
        for u in chosen:
            known.index(u)  # an unknown user raises, naming it
    else:
        chosen = list(known.ids())
    if not chosen:
        raise LLMRecError(f"{model_dir}: the checkpoint knows no users")
    out = Path(out)
    single = out.suffix == ".parquet"
    if single and out.is_dir():
        raise LLMRecError(f"{out}: a folder; name a file ending .parquet or a folder without that suffix")
    if single and out.exists() and not overwrite:
        raise LLMRecError(f"{out}: already exists; pass --overwrite to replace it")
    parts = out.with_name(f".{out.name}.parts") if single else out
    job = job_spec(model_dir, chosen, k, explain, chunk_size)
    t0 = time.perf_counter()
    finished = prepare(parts, job, overwrite, out)
    chunks = [chosen[s:s + chunk_size] for s in range(0, len(chosen), chunk_size)]
    todo = [(c, u) for c, u in enumerate(chunks) if c not in finished]
    used = 1
    if todo and engine == "local":
        _run_local(todo, model_dir, parts, k, explain, progress)
    elif todo:
        used = _run_ray(todo, model_dir, parts, k, explain, progress, address, num_cpus, workers)
    rows = _join(parts, out, len(chunks), explain) if single else _count_rows(parts, len(chunks))
    seconds = time.perf_counter() - t0
    return {"out": str(out), "engine": engine, "workers": used, "users": len(chosen), "k": k, "rows": rows,
            "chunks": len(chunks), "chunks_computed": len(todo), "chunks_resumed": len(chunks) - len(todo),
            "seconds": round(seconds, 3),
            "users_per_second": round(sum(len(u) for _, u in todo) / seconds, 1) if todo and seconds else None}


def _count_rows(parts: Path, n_chunks: int) -> int:
    import pyarrow.parquet as pq
    return sum(pq.ParquetFile(parts / part_name(c)).metadata.num_rows for c in range(n_chunks))


def _join(parts: Path, out: Path, n_chunks: int, explain: bool) -> int:
    """The part files joined in order into ``out`` (written under a temporary name and renamed); the
    parts folder removed after."""
    import pyarrow.parquet as pq
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rows = 0
    with pq.ParquetWriter(tmp, schema_for(explain)) as w:
        for c in range(n_chunks):
            t = pq.read_table(parts / part_name(c))
            w.write_table(t)
            rows += t.num_rows
    os.replace(tmp, out)
    shutil.rmtree(parts)
    return rows
