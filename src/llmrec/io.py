"""Read tables (CSV, TSV, JSONL, Parquet) in chunks, with errors that name file, line and field.

The fast readers (pandas' C parser, pyarrow) do not know file lines: a blank line or a quoted newline
shifts them. So a data row is located only when something is wrong with it: ``line_of_row`` scans the
file again and counts lines the way the reader skipped them. The normal path pays nothing for it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from .errors import DataError, UnknownNameError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
CHUNK_ROWS = 1_000_000  # rows per chunk: bounded memory whatever the file's length
JSONL_CHUNK_ROWS = 200_000  # a parsed JSON line is a dict (~0.5 kB): smaller chunks, the same bound
_SEPS = {"csv": ",", "tsv": "\t"}


def is_dataset(path: str | Path) -> bool:
    """Whether ``path`` names a Parquet data set rather than one file: a folder of part files (hive
    partitions such as ``genre=drama/`` included) or a URI with a filesystem scheme (``file://``,
    ``s3://``, ... as ``pyarrow.fs`` reads them)."""
    return "://" in str(path) or Path(path).is_dir()


def location(path: str | Path) -> str:
    """How a data source is recorded: a URI as given, a local path made absolute."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def parquet_dataset(path: str | Path):
    """A ``pyarrow.dataset`` over a folder or URI of Parquet files, hive partitions read as columns,
    its files in path order (row order is the files' order, then each file's). Errors name the path."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    try:
        if "://" in str(path):
            fs, root = pafs.FileSystem.from_uri(str(path))
        else:
            fs, root = pafs.LocalFileSystem(), str(Path(path).resolve())
        found = pads.dataset(root, filesystem=fs, format="parquet", partitioning="hive")
        files = sorted(found.files)
        if not files:
            raise DataError("no Parquet files in the folder", path=str(path))
        return pads.dataset(files, filesystem=fs, format="parquet", schema=found.schema,
                            partitioning=pads.partitioning(found.partitioning.schema, flavor="hive")
                            if found.partitioning is not None else None, partition_base_dir=root)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"not a readable Parquet data set ({str(e).splitlines()[0]})", path=str(path)) from None


def detect_format(path: str | Path) -> str:
    if is_dataset(path):
        return "parquet"
    name = str(path).lower()
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"), (".inter", "tsv"),
                        (".item", "tsv"), (".user", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"cannot tell the format from the file name; use one of {', '.join(FORMATS)} "
                    "(extensions .csv .tsv .jsonl .parquet) or pass fmt=", path=str(path))


# -- locating a byte, a line, a row: error paths only -------------------------------------------------
def first_bad_utf8(path: str | Path, block_size: int = 1 << 20) -> tuple[int, int, int] | None:
    """(line, byte offset in the file, the byte) of the first byte that is not UTF-8, or None."""
    carry, base, newlines = b"", 0, 0  # base: file offset of carry's first byte
    with open(path, "rb") as f:
        while True:
            block = f.read(block_size)
            data = carry + block
            try:
                data.decode("utf-8")
                used = len(data)
            except UnicodeDecodeError as e:
                if block and e.reason == "unexpected end of data":  # a character cut by the block end
                    used = e.start
                else:
                    return newlines + data[:e.start].count(b"\n") + 1, base + e.start, data[e.start]
            if not block:
                return None
            newlines += data[:used].count(b"\n")
            base += used
            carry = data[used:]


def _utf8_error(path: str | Path) -> DataError:
    bad = first_bad_utf8(path)
    if bad is None:
        return DataError("not UTF-8 text", path=str(path))
    line, at, byte = bad
    return DataError(f"not UTF-8 text (byte 0x{byte:02x} at byte offset {at:,} of the file)",
                     path=str(path), line=line)


def _is_blank(record: list[str]) -> bool:
    return len(record) <= 1 and (not record or not record[0].strip())


def _csv_records(path: str | Path, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each record after the header, blank lines skipped as pandas skips them."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=_SEPS[fmt])
        header = next(reader, None)
        if header is None:
            return
        end = reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num
            if not _is_blank(record):
                yield start, record


def line_of_row(path: str | Path, row: int, fmt: str | None = None) -> int:
    """The 1-based file line of data row ``row`` (0-based, as the reader counts rows: header and blank
    lines not counted). Parquet has no lines: its row number (1-based) stands in."""
    fmt = fmt or detect_format(path)
    if fmt in _SEPS:
        for i, (start, _) in enumerate(_csv_records(path, fmt)):
            if i == row:
                return start
    elif fmt == "jsonl":
        i = -1
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    i += 1
                    if i == row:
                        return lineno
    return row + 1


def _parser_error(path: Path, fmt: str, err: Exception) -> DataError:
    """The first record whose field count differs from the header's, or pandas' own line."""
    msg = str(err).strip()
    header = None
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter=_SEPS[fmt]), None)
    if header:
        for start, record in _csv_records(path, fmt):
            if len(record) != len(header):
                return DataError(f"the line does not parse: expected {len(header)} fields, saw "
                                 f"{len(record)}", path=str(path), line=start)
    m = re.search(r"line (\d+)", msg)
    return DataError(f"the line does not parse: {msg}", path=str(path), line=int(m.group(1)) if m else None)


# -- chunked readers ----------------------------------------------------------------------------------
def _delimited_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        reader = pd.read_csv(path, sep=_SEPS[fmt], dtype=str, keep_default_na=False,
                             quoting=csv.QUOTE_MINIMAL, encoding="utf-8", chunksize=chunk_rows)
        with reader:
            for chunk in reader:
                # RecBole atomic headers are "name:type"
                chunk.columns = [str(c).split(":", 1)[0].strip() for c in chunk.columns]
                yield chunk
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", path=str(path)) from None
    except pd.errors.ParserError as e:
        raise _parser_error(path, fmt, e) from None
    except UnicodeDecodeError:
        raise _utf8_error(path) from None


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    rows: list[dict] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of "
                                "the line)", path=str(path), line=lineno) from None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg})", path=str(path), line=lineno) from None
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", path=str(path), line=lineno)
            rows.append(obj)
            if len(rows) == chunk_rows:
                yield pd.DataFrame(rows)
                rows = []
    if rows:
        yield pd.DataFrame(rows)


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"not a readable Parquet file ({e})", path=str(path)) from None


def _dataset_chunks(path: str | Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    data = parquet_dataset(path)
    try:
        for batch in data.to_batches(batch_size=chunk_rows):
            if batch.num_rows:
                yield batch.to_pandas()
    except (OSError, ValueError) as e:
        raise DataError(f"not a readable Parquet data set ({str(e).splitlines()[0]})", path=str(path)) from None


def _file_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if fmt in _SEPS:
        return _delimited_chunks(path, fmt, chunk_rows)
    if fmt == "jsonl":
        return _jsonl_chunks(path, min(chunk_rows, JSONL_CHUNK_ROWS))
    if fmt == "parquet":
        return _parquet_chunks(path, chunk_rows)
    raise DataError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}", path=str(path))


def iter_chunks(path: str | Path, fmt: str | None = None, columns: dict[str, str] | None = None,
                chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Read a table as frames of at most ``chunk_rows`` rows; ``columns`` maps our column names to the
    file's (e.g. ``{"item_id": "movieId"}``). Delimited files are read as strings (ids stay exact).
    Rows are counted without the header and blank lines; ``line_of_row`` turns a row into a line.
    A folder or a URI (``file://``, ``s3://``) is a Parquet data set (``parquet_dataset``), read batch
    by batch: one chunk in memory at a time whatever its size."""
    if is_dataset(path):
        chunks = _dataset_chunks(path, chunk_rows)
    else:
        path = Path(path)
        if not path.exists():
            raise DataError("no such file", path=str(path))
        if path.stat().st_size == 0:
            raise DataError("the file is empty", path=str(path))
        chunks = _file_chunks(path, fmt or detect_format(path), chunk_rows)
    n = 0
    for df in chunks:
        if columns:
            missing = [src for src in columns.values() if src not in df.columns]
            if missing:
                raise DataError(f"column(s) {missing} named in the column mapping are not in the file; "
                                f"its columns are {list(df.columns)}", path=str(path), field=missing[0])
            df = df.rename(columns={src: ours for ours, src in columns.items()})
        if len(df):
            n += len(df)
            yield df
    if n == 0:
        raise DataError("the file has a header but no rows", path=str(path))


def read_table(path: str | Path, fmt: str | None = None,
               columns: dict[str, str] | None = None) -> pd.DataFrame:
    """The whole table in one frame (an item catalogue); logs go through ``iter_chunks``."""
    chunks = list(iter_chunks(path, fmt, columns))
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def parse_column_map(spec: str | None, valid: tuple[str, ...] | None = None) -> dict[str, str]:
    """``"user_id=userId,item_id=movieId"`` -> ``{"user_id": "userId", "item_id": "movieId"}``.
    With ``valid``, a key (our side) outside it is refused by name, with the valid keys."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        if "=" not in part:
            raise DataError(f"column mapping expects OURS=THEIRS pairs, got {part!r}")
        ours, theirs = part.split("=", 1)
        out[ours.strip()] = theirs.strip()
    if valid is not None:
        check_column_keys(out, valid)
    return out


def check_column_keys(mapping: dict[str, str], valid: tuple[str, ...]) -> None:
    for key in mapping:
        if key not in valid:
            raise UnknownNameError("column-mapping key", key, valid)
