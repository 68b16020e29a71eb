"""Read tables (CSV, TSV, JSONL, Parquet) into pandas with errors that name file, line and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from .errors import DataError

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def detect_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"), (".inter", "tsv"),
                        (".item", "tsv"), (".user", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"cannot tell the format from the file name; use one of {', '.join(FORMATS)} "
                    "(extensions .csv .tsv .jsonl .parquet) or pass fmt=", path=str(path))


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg})", path=str(path), line=lineno) from None
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", path=str(path), line=lineno)
            rows.append(obj)
    return pd.DataFrame(rows)


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL,
                         encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", path=str(path)) from None
    except pd.errors.ParserError as e:
        msg = str(e)
        line = None
        import re
        m = re.search(r"line (\d+)", msg)
        if m:
            line = int(m.group(1))
        raise DataError(f"the line does not parse: {msg.strip()}", path=str(path), line=line) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=str(path)) from None
    # RecBole atomic headers are "name:type"
    df.columns = [str(c).split(":", 1)[0].strip() for c in df.columns]
    return df


def read_table(path: str | Path, fmt: str | None = None,
               columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a table; ``columns`` maps our column names to the file's (e.g. ``{"item_id": "movieId"}``).

    Delimited files are read as strings (ids stay exact); the caller converts typed fields.
    Row ``i`` of the result came from line ``i + 2`` of a delimited file (header is line 1).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", path=str(path))
    if path.is_dir():
        raise DataError("is a folder, expected a file", path=str(path))
    if path.stat().st_size == 0:
        raise DataError("the file is empty", path=str(path))
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        df = _read_delimited(path, ",")
    elif fmt == "tsv":
        df = _read_delimited(path, "\t")
    elif fmt == "jsonl":
        df = _read_jsonl(path)
    elif fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DataError(f"not a readable Parquet file ({e})", path=str(path)) from None
    else:
        raise DataError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}", path=str(path))
    if len(df) == 0:
        raise DataError("the file has a header but no rows", path=str(path))
    if columns:
        missing = [src for src in columns.values() if src not in df.columns]
        if missing:
            raise DataError(f"column(s) {missing} named in the column mapping are not in the file; "
                            f"its columns are {list(df.columns)}", path=str(path), field=missing[0])
        df = df.rename(columns={src: ours for ours, src in columns.items()})
    return df


def line_of(df_row: int, fmt: str) -> int:
    """The 1-based file line of data row ``df_row`` (delimited files carry a header line)."""
    return df_row + 2 if fmt in ("csv", "tsv") else df_row + 1


def parse_column_map(spec: str | None) -> dict[str, str]:
    """``"user_id=userId,item_id=movieId"`` -> ``{"user_id": "userId", "item_id": "movieId"}``."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        if "=" not in part:
            raise DataError(f"column mapping expects OURS=THEIRS pairs, got {part!r}")
        ours, theirs = part.split("=", 1)
        out[ours.strip()] = theirs.strip()
    return out
