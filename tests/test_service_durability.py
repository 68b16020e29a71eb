"""A real `llmrec serve` subprocess, killed with SIGKILL while clients stream events: after a restart every
event whose request returned 2xx is there, none twice, over SQLite and over Postgres. Plus raw-socket
garbage against the real server."""

import os
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from servicekit import exchange, free_port, start_server, write_files

N_CLIENTS = 4
MIN_ACKED = 150


@pytest.fixture
def files(tmp_path):
    return write_files(tmp_path)


def _serve_args(files, data_dir, database=None):
    items, inter = files
    return ["--items", str(items), "--interactions", str(inter), "--model", "itemknn",
            "--data-dir", str(data_dir), *(["--database", database] if database else [])]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_loses_no_acknowledged_event(files, tmp_path, backend, request):
    database = request.getfixturevalue("pg_url") if backend == "postgres" else None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = "durable-key"
    env = {"LLMREC_API_KEY": key}
    auth = {"Authorization": f"Bearer {key}"}
    proc = start_server(_serve_args(files, tmp_path / "state", database), port, env)
    acked: list[str] = []   # event ids whose request returned 2xx
    sent: list[str] = []
    lock = threading.Lock()
    owner: dict[str, str] = {}  # event id -> its user (event ids are unique per user)
    stop = threading.Event()
    items = [f"{t}{j}" for t in "scg" for j in range(12)]

    def stream(c: int) -> None:
        n = 0
        with httpx.Client(base_url=url, headers=auth, timeout=5.0) as http:
            while not stop.is_set():
                batch = 1 if n % 3 else 5  # singles and batches
                evs = [{"user_id": f"client{c}-user{(n + j) % 7}", "item_id": items[(n * 7 + j) % len(items)],
                        "type": ("view", "like", "click", "dislike")[(n + j) % 4],
                        "event_id": f"c{c}-e{n + j}"} for j in range(batch)]
                n += batch
                with lock:
                    sent.extend(e["event_id"] for e in evs)
                    owner.update((e["event_id"], e["user_id"]) for e in evs)
                try:
                    r = http.post("/events", json=evs if batch > 1 else evs[0])
                except httpx.HTTPError:
                    return  # the server died under this request: its outcome is unknown
                if r.status_code // 100 == 2:
                    with lock:
                        acked.extend(e["event_id"] for e in evs)
                else:
                    raise AssertionError(r.text)

    threads = [threading.Thread(target=stream, args=(c,), daemon=True) for c in range(N_CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < MIN_ACKED and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) >= MIN_ACKED, f"only {len(acked)} events acknowledged before the deadline"

    proc = start_server(_serve_args(files, tmp_path / "state", database), port, env)
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=10.0) as http:
            users = sorted({f"client{c}-user{u}" for c in range(N_CLIENTS) for u in range(7)})
            stored = []
            for u in users:
                r = http.get(f"/users/{u}/events")
                if r.status_code == 200:
                    stored += [e["event_id"] for e in r.json()["events"]]
            counts = Counter(stored)
            missing = set(acked) - set(stored)
            print(f"\nacknowledged {len(acked)}, sent {len(sent)}, stored after restart {len(stored)}")
            assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
            assert max(counts.values()) == 1, "an event stored twice"
            assert set(stored) <= set(sent)
            assert http.get("/health").json()["events"] == len(stored)
            # clients retrying everything they were told was stored: nothing is stored twice
            r = http.post("/events", json=[{"user_id": owner[e], "item_id": "s0", "type": "view",
                                            "event_id": e} for e in acked[:500]])
            assert r.json()["stored"] == 0 and r.json()["duplicates"] == min(500, len(acked))
            assert http.get("/health").json()["events"] == len(stored)
    finally:
        proc.kill()
        proc.wait(10)


def test_real_server_bad_requests(files, tmp_path):
    """Garbage at the socket level (uvicorn's own 4xx) and the writes-disabled default."""
    port = free_port()
    proc = start_server(_serve_args(files, tmp_path / "state"), port, env={"LLMREC_API_KEY": ""})
    try:
        cases = [
            b"GARBAGE\r\n\r\n",
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n"
            b"Connection: close\r\n\r\n\xff\xfe\xfd\x00{}{}{",
            b"GET /items/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n{",
        ]
        for data in cases:
            status = exchange(port, [data])[0].split(b"\r\n", 1)[0]
            code = int(status.split()[1]) if status.startswith(b"HTTP/1.1") else None
            assert code is None or 400 <= code < 500, (data[:40], status)
        r = httpx.post(f"http://127.0.0.1:{port}/events",
                       json={"user_id": "u0", "item_id": "s1", "type": "like"})
        assert r.status_code == 403, "no key and no --insecure: writes refused"
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["writes"] == "disabled"
        assert httpx.post(f"http://127.0.0.1:{port}/recommend", json={"history": ["s1"]}).status_code == 200
        r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "u0"})
        assert r.status_code == 403, "no key: user data closed"
    finally:
        proc.kill()
        proc.wait(10)
