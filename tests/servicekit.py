"""Shared helpers for the service tests: a small bilingual catalogue with topics, a text-capable test model,
free ports and a server subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from llmrec.data import build_dataset
from llmrec.models.itemknn import ItemKNN

TOPICS = {
    "Sci-Fi": [("Alien Worlds", "一部关于外星生命的科幻电影"), ("Time Gate", "一部关于时空旅行的科幻电影"),
               ("Star Harbor", "星际港口科幻电影"), ("Red Planet", "火星殖民科幻电影")],
    "Cooking": [("Home Cooking", "一本家常菜谱"), ("Noodle Book", "面条的做法"),
                ("Baking Basics", "烘焙入门书"), ("Soup Days", "汤的食谱")],
    "Garden": [("Garden Tools", "园艺工具指南"), ("Rose Care", "玫瑰养护手册"),
               ("Soil Notes", "土壤与肥料"), ("Small Yards", "小院子设计")],
}
N_PER_TOPIC = 12  # 3 topics x 12 = 36 items


def catalogue() -> pd.DataFrame:
    rows = []
    for genre, names in TOPICS.items():
        for j in range(N_PER_TOPIC):
            en, zh = names[j % len(names)]
            rows.append({"item_id": f"{genre[:1].lower()}{j}", "title": f"{en} {j + 1} · {zh}",
                         "genres": genre, "year": str(1990 + j)})
    return pd.DataFrame(rows)


def interactions(n_users: int = 60, seed: int = 0) -> pd.DataFrame:
    """Each user keeps to one topic (one stray item in eight)."""
    rng = np.random.default_rng(seed)
    items = catalogue()
    by_topic = {g: items.item_id[items.genres == g].tolist() for g in TOPICS}
    rows = []
    for u in range(n_users):
        topic = list(TOPICS)[u % len(TOPICS)]
        seen = set()
        for t in range(8):
            pool = by_topic[topic] if rng.random() > 0.125 else items.item_id.tolist()
            i = str(rng.choice(pool))
            if i not in seen:
                seen.add(i)
                rows.append({"user_id": f"u{u}", "item_id": i, "timestamp": t})
    return pd.DataFrame(rows)


def dataset():
    return build_dataset("topics", interactions(), catalogue())


def write_files(folder: Path) -> tuple[Path, Path]:
    items, inter = folder / "items.csv", folder / "interactions.csv"
    catalogue().to_csv(items, index=False)
    interactions().to_csv(inter, index=False)
    return items, inter


def _bigrams(s: str) -> set[str]:
    s = "".join(s.casefold().split())
    return {s[i:i + 2] for i in range(len(s) - 1)}


class TextKNN(ItemKNN):
    """itemknn plus the optional text protocol (``recommend_text``, ``score_texts``, ``add_items``) by character bigram
    overlap with the item's title and genres: enough to test the service's plumbing for text models."""

    name = "textknn-test"
    _local = threading.local()  # the text query of this thread's call: the service queries concurrently

    @property
    def _query(self) -> str | None:
        return getattr(self._local, "query", None)

    def add_items(self, rows: pd.DataFrame) -> np.ndarray:
        return self.upsert_catalog(rows)

    def recommend_text(self, texts, k=10, histories=None, exclude_seen=True, exclude=None, candidates=None,
                       explain=False):
        (self._local.query,) = texts  # one text a call: what the service sends
        try:
            return self.recommend_indices([np.zeros(0, np.int64)], k, exclude_seen=False, exclude=exclude,
                                          candidates=candidates, explain=explain)
        finally:
            self._local.query = None

    def score_texts(self, texts):
        f = self.catalog.frame
        text = (f["title"].fillna("").astype(str) + " " + f.get("genres", "").fillna("").astype(str))
        items = [_bigrams(t) for t in text]
        return np.array([[len(_bigrams(q) & t) for t in items] for q in texts], dtype=np.float32)

    def score_histories(self, histories):
        if self._query is None:
            return super().score_histories(histories)
        s = self.score_texts([self._query])[0]
        return np.broadcast_to(s, (len(histories), len(s))).copy()

    def explain_items(self, history, items):
        if self._query is None:
            return super().explain_items(history, items)
        return [{"reason": "shares words with your interests"} for _ in items]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            r = httpx.get(url + "/health", timeout=1.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def start_server(args: list[str], port: int, env: dict | None = None) -> subprocess.Popen:
    """``python -m llmrec.cli serve ARGS --port PORT`` as a subprocess, healthy on return."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    full_env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "TQDM_DISABLE": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "llmrec.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def exchange(port: int, chunks: list[bytes], pause: float = 0.0, wait: float = 5.0) -> tuple[bytes, float]:
    """Send ``chunks`` (pausing between them), read until the server closes; (answer, seconds)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        for c in chunks:
            try:
                s.sendall(c)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out, time.perf_counter() - t0
