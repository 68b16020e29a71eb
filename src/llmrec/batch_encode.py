"""Batch encode: every item text of a catalogue as a vector, written as Parquet part files with
``item_id`` (string) and ``vector`` (a fixed-size list of float32), resumable, nothing half-written.

The items are cut into chunks of ``chunk_size`` rows in the catalogue's order; chunk i becomes
``part-0000i.parquet``, written under a temporary name and renamed, with ``_job.json`` beside the parts
(the catalogue, the encoder, the template, normalisation, the chunk size): the machinery, resume and
``overwrite`` rule of ``batch.recommend``.

Where the items come from:
- a Parquet data set (a folder of part files, hive partitions included, or a ``file://`` / ``s3://``
  URI): the driver reads only the files' footers and plans each chunk as row ranges of files; whoever
  encodes a chunk reads those rows itself, so on Ray the catalogue never passes through one process;
- one file (CSV, TSV, JSONL, Parquet) or a named data set: read by the driver, each chunk's ids and
  texts handed to the worker.

Two engines write the same part files: ``local`` (this process) and ``ray`` (Ray Data: the chunks as a
dataset, ``map_batches`` over a pool of actors that each load the encoder once). ``load_vectors`` reads a
finished folder back in a catalogue's order, for a zero-shot fit (``--set vectors=FOLDER``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import batch
from .errors import DataError, LLMRecError

CHUNK_SIZE = 10_000


# -- where the items are: a plan of chunks ------------------------------------------------------------
def _segments(source: str, chunk_size: int) -> tuple[list[dict], str, int]:
    """A Parquet data set's chunks as row ranges of its files ([path, start, stop, partition values]),
    from the footers alone; the data set's fingerprint (files, rows, sizes) and its rows."""
    import pyarrow.dataset as pads

    from . import io
    data = io.parquet_dataset(source)
    files = []
    for frag in sorted(data.get_fragments(), key=lambda f: f.path):
        keys = {k: str(v) for k, v in (pads.get_partition_keys(frag.partition_expression) or {}).items()}
        files.append((frag.path, frag.metadata.num_rows, keys))
    sizes = [info.size for info in data.filesystem.get_file_info([f[0] for f in files])]
    fingerprint = hashlib.sha256(json.dumps([[f[0], f[1], s] for f, s in zip(files, sizes)]).encode())
    total = sum(f[1] for f in files)
    chunks = [{"segments": []} for _ in range(-(-total // chunk_size))]
    at = 0  # the global row where the current file starts
    for path, rows, keys in files:
        for c in range(at // chunk_size, -(-(at + rows) // chunk_size)):
            lo, hi = max(c * chunk_size, at), min((c + 1) * chunk_size, at + rows)
            if lo < hi:
                chunks[c]["segments"].append([path, lo - at, hi - at, keys])
        at += rows
    return chunks, fingerprint.hexdigest()[:16], total


def _inline(catalog, template: str, chunk_size: int) -> tuple[list[dict], str, int]:
    """A catalogue in memory: each chunk carries its ids and rendered texts."""
    from .text import item_texts
    ids = [str(x) for x in catalog.ids.ids()]
    texts = item_texts(catalog, template)
    h = hashlib.sha256()
    for i, t in zip(ids, texts):
        h.update(f"{i}\t{t}\n".encode())
    chunks = [{"ids": ids[s:s + chunk_size], "texts": texts[s:s + chunk_size]}
              for s in range(0, len(ids), chunk_size)]
    return chunks, h.hexdigest()[:16], len(ids)


def plan(items: str | Path | None, dataset: str | None, item_columns: dict[str, str] | None, template: str,
         chunk_size: int) -> tuple[list[dict], dict]:
    """The chunks to encode and what identifies the catalogue (for the job file)."""
    from . import datasets, io
    from .data import load_catalog
    if bool(items) == bool(dataset):
        raise LLMRecError("pass either --items FILE_OR_FOLDER or --dataset NAME")
    if dataset:
        chunks, fp, n = _inline(datasets.load(dataset, quiet=True).catalog, template, chunk_size)
        where = {"dataset": dataset}
    elif io.is_dataset(items):
        chunks, fp, n = _segments(str(items), chunk_size)
        where = {"items": io.location(items)}
    else:
        chunks, fp, n = _inline(load_catalog(items, item_columns), template, chunk_size)
        where = {"items": io.location(items)}
    if not n:
        raise DataError("the catalogue has no items", path=str(items or dataset))
    return chunks, {**where, "item_columns": item_columns or None, "items_sha256": fp, "n_items": n}


def _read_rows(fs, path: str, start: int, stop: int, columns: list[str]):
    """Rows [start, stop) of one Parquet file: only the row groups holding them are read."""
    import pyarrow.parquet as pq
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        groups, first, at = [], None, 0
        for g in range(md.num_row_groups):
            rows = md.row_group(g).num_rows
            if at < stop and at + rows > start:
                groups.append(g)
                first = at if first is None else first
            at += rows
        present = [c for c in columns if c in pf.schema_arrow.names]
        return pf.read_row_groups(groups, columns=present).slice(start - first, stop - start)


def read_chunk(spec: dict, source: str | None, item_columns: dict[str, str] | None, template: str):
    """(item ids, texts) of a planned chunk: inline, or read from its files' row ranges (partition values
    as columns, the column mapping applied, the template rendered)."""
    if "ids" in spec:
        return spec["ids"], spec["texts"]
    import pandas as pd
    import pyarrow.fs as pafs

    from .data import Catalog
    from .text import item_texts, template_fields
    fs = pafs.FileSystem.from_uri(source)[0] if "://" in source else pafs.LocalFileSystem()
    theirs = dict(item_columns or {})
    wanted = [theirs.get(c, c) for c in ["item_id", *template_fields(template)]]
    frames = []
    for path, start, stop, keys in spec["segments"]:
        frame = _read_rows(fs, path, start, stop, wanted).to_pandas()
        for k, v in keys.items():
            if k in wanted and k not in frame.columns:
                frame[k] = v
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = frame.rename(columns={src: ours for ours, src in theirs.items()})
    if "item_id" not in frame.columns:
        raise DataError(f"no 'item_id' column; columns are {list(frame.columns)} (map one with "
                        "--item-columns item_id=...)", path=source, field="item_id")
    catalog = Catalog.from_frame(frame, path=source)
    return [str(x) for x in catalog.ids.ids()], item_texts(catalog, template)


# -- one chunk ----------------------------------------------------------------------------------------
def vectors_table(ids: list[str], vectors: np.ndarray):
    import pyarrow as pa
    d = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32())
    return pa.table({"item_id": pa.array(ids, pa.string()), "vector": pa.FixedSizeListArray.from_arrays(flat, d)})


def parquet_options(table) -> dict:
    """Floats do not repeat: no dictionary for them, and their bytes split by position (384-d Gaussian
    vectors: 1,418 bytes an item against 1,605 with pyarrow's defaults, 1,536 raw)."""
    element = table.schema.field("vector").type.value_field.name  # "element" or "item" by pyarrow version
    return {"use_dictionary": ["item_id"], "column_encoding": {f"vector.list.{element}": "BYTE_STREAM_SPLIT"}}


class ChunkEncoder:
    """Loads the encoder once; called on a batch of chunks (``chunk``: indices, ``spec``: the planned
    chunks as JSON), encodes each chunk's texts and writes its part file; returns the chunks and their row
    counts. Ray Data runs it as a stateful actor; the local engine calls it directly."""

    def __init__(self, encoder: str, parts: str, template: str, normalize: bool, batch_size: int | None,
                 source: str | None, item_columns: dict | None, threads: int | None = None):
        from . import encoders
        if threads:
            batch._limit_threads(threads)
        self.encoder = encoders.get(encoder)
        if threads and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        self.parts, self.template, self.normalize = Path(parts), template, normalize
        self.batch_size, self.source, self.item_columns = batch_size, source, item_columns

    def __call__(self, batch_: dict) -> dict:
        rows = []
        for chunk, spec in zip(batch_["chunk"], batch_["spec"]):
            ids, texts = read_chunk(json.loads(spec), self.source, self.item_columns, self.template)
            vecs = self.encoder.encode(texts, normalize=self.normalize, batch_size=self.batch_size,
                                       progress=False)
            table = vectors_table(ids, vecs)
            batch.write_part(table, self.parts, int(chunk), **parquet_options(table))
            rows.append(len(ids))
        return {"chunk": np.asarray(batch_["chunk"], np.int64), "rows": np.asarray(rows, np.int64)}


# -- the API ------------------------------------------------------------------------------------------
def encode(out: str | Path, *, encoder: str, items: str | Path | None = None, dataset: str | None = None,
           item_columns: dict[str, str] | None = None, template: str | None = None, normalize: bool = True,
           batch_size: int | None = None, engine: str = "local", address: str | None = None,
           num_cpus: int | None = None, workers: int | None = None, chunk_size: int = CHUNK_SIZE,
           overwrite: bool = False, progress: bool = False) -> dict:
    """Every item text of ``items`` (a catalogue file, a Parquet folder or URI) or of the named
    ``dataset`` encoded with ``encoder`` into the folder ``out`` (``part-*.parquet``: ``item_id``,
    ``vector``); resumes the same job, refuses another's results unless ``overwrite``. ``engine``:
    ``local`` or ``ray`` (``address``, ``num_cpus``, ``workers`` as ``batch.recommend`` takes them).
    Returns a summary."""
    from . import encoders
    from .text import DEFAULT_TEMPLATE
    if engine not in batch.ENGINES:
        raise LLMRecError(f"unknown engine {engine!r}; valid choices: {', '.join(batch.ENGINES)}")
    if chunk_size < 1:
        raise LLMRecError(f"chunk size must be at least 1, got {chunk_size}")
    if engine == "ray":
        batch._import_ray()
    name = encoders.resolve(encoder)[1]  # an unknown name fails before any work
    template = template or DEFAULT_TEMPLATE
    out = Path(out)
    if out.suffix == ".parquet":
        raise LLMRecError(f"{out}: name a folder (vectors are written as part files)")
    chunks, source = plan(items, dataset, item_columns, template, chunk_size)
    job = {**source, "encoder": name, "template": template, "normalize": normalize, "chunk_size": chunk_size}
    t0 = time.perf_counter()
    finished = batch.prepare(out, job, overwrite, out)
    todo = [(c, spec) for c, spec in enumerate(chunks) if c not in finished]
    from .io import is_dataset
    where = source["items"] if items is not None and is_dataset(items) else None  # the workers read it
    kwargs = {"encoder": name, "parts": str(out.resolve()), "template": template, "normalize": normalize,
              "batch_size": batch_size, "source": where, "item_columns": item_columns or None}
    used = 1
    if todo and engine == "local":
        from tqdm.auto import tqdm
        run = ChunkEncoder(**kwargs)
        for c, spec in tqdm(todo, desc="batch encode", unit="chunk", disable=not progress):
            run({"chunk": [c], "spec": [json.dumps(spec)]})
    elif todo:
        used, ret = batch.run_on_ray([{"chunk": c, "spec": json.dumps(s)} for c, s in todo], ChunkEncoder,
                                     kwargs, address=address, num_cpus=num_cpus, workers=workers,
                                     progress=progress)
        batch.check_done({c for c, _ in todo}, ret)
    seconds = time.perf_counter() - t0
    done = sum(len(s["ids"]) if "ids" in s else sum(g[2] - g[1] for g in s["segments"]) for _, s in todo)
    return {"out": str(out), "engine": engine, "workers": used, "encoder": name, "items": source["n_items"],
            "chunks": len(chunks), "chunks_computed": len(todo), "chunks_resumed": len(chunks) - len(todo),
            "seconds": round(seconds, 3), "items_per_second": round(done / seconds, 1) if done and seconds else None}


# -- reading the vectors back ---------------------------------------------------------------------------
def read_job(folder: str | Path) -> dict:
    """The job of a finished encode folder; refused when it is not one or is unfinished."""
    folder = Path(folder)
    try:
        job = json.loads((folder / batch.JOB_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError("not a folder written by `llmrec batch encode` (no readable _job.json)",
                        path=str(folder)) from None
    if "encoder" not in job or "n_items" not in job:
        raise DataError("the folder holds another batch stage's results, not item vectors", path=str(folder))
    n_chunks = -(-job["n_items"] // job["chunk_size"])
    missing = [c for c in range(n_chunks) if not (folder / batch.part_name(c)).exists()]
    if missing:
        raise DataError(f"unfinished: {len(missing)} of {n_chunks} part files missing (e.g. "
                        f"{batch.part_name(missing[0])}); run the same encode again to finish it", path=str(folder))
    return job


def read_vectors(folder: str | Path, catalog) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of ``catalog``'s items, float32 [len(catalog), d] in its order (zeros where missing),
    from a finished encode folder (which may hold more items than the catalogue), and which items it had
    (bool [len(catalog)])."""
    import pandas as pd
    import pyarrow.parquet as pq
    folder = Path(folder)
    job = read_job(folder)
    index = pd.Index(catalog.frame["item_id"].astype(str))
    out, found = None, np.zeros(len(catalog), bool)
    for c in range(-(-job["n_items"] // job["chunk_size"])):
        t = pq.read_table(folder / batch.part_name(c))
        vec = t.column("vector").combine_chunks()
        d = vec.type.list_size
        flat = vec.values.to_numpy(zero_copy_only=False).reshape(-1, d)
        if out is None:
            out = np.zeros((len(catalog), d), np.float32)
        rows = index.get_indexer(t.column("item_id").to_numpy(zero_copy_only=False))
        keep = rows >= 0
        out[rows[keep]] = flat[keep]
        found[rows[keep]] = True
    return out, found


def load_vectors(folder: str | Path, catalog) -> np.ndarray:
    """``read_vectors`` of every item of ``catalog``; an item the folder lacks is refused by id."""
    out, found = read_vectors(folder, catalog)
    if not found.all():
        first = catalog.ids.id(int(np.flatnonzero(~found)[0]))
        raise DataError(f"item {first!r} of the catalogue has no vector ({int((~found).sum()):,} items lack "
                        "one); encode this catalogue", path=str(folder))
    return out
