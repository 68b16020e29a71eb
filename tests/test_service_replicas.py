"""Real `llmrec serve` processes over one Postgres: what one replica is told, the others answer within the
feed's bound; a delete through one is a 404 in all; Postgres lost mid-run and back; down at start; a
newer schema refused; `--workers 2` on one port."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from pgkit import Cluster
from servicekit import free_port, start_server, wait_healthy, write_files

KEY = "replica-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENV = {"LLMREC_API_KEY": KEY}
BOUND_S = 5.0  # the staleness the README's replicas are held to (typically milliseconds; tails: CPU load)
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def files(tmp_path):
    return write_files(tmp_path)


def _args(files, state, database):
    items, inter = files
    return ["--items", str(items), "--interactions", str(inter), "--model", "itemknn",
            "--data-dir", str(state), "--database", database]


def _until(check, bound: float) -> float:
    """Seconds until ``check()`` is true; fails past ``bound``."""
    t0 = time.perf_counter()
    while not check():
        assert time.perf_counter() - t0 < bound, f"not seen within {bound} s"
        time.sleep(0.005)
    return time.perf_counter() - t0


def _history(http, user):
    r = http.get(f"/users/{user}/history")
    return [i["item_id"] for i in r.json()["items"]] if r.status_code == 200 else None


def test_two_replicas_share_events_items_and_deletes(files, tmp_path, pg_url):
    pa, pb = free_port(), free_port()
    a = start_server(_args(files, tmp_path / "state", pg_url), pa, ENV)
    b = start_server(_args(files, tmp_path / "state", pg_url), pb, ENV)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{pa}", headers=AUTH) as ha, \
                httpx.Client(base_url=f"http://127.0.0.1:{pb}", headers=AUTH) as hb:
            assert hb.post("/recommend", json={"user_id": "newbie"}).status_code == 404
            assert ha.post("/events", json=[{"user_id": "newbie", "item_id": i, "type": "like"}
                                            for i in ("s0", "s1", "s2")]).status_code == 200
            lag = _until(lambda: _history(hb, "newbie") == ["s0", "s1", "s2"], BOUND_S)
            recs = hb.post("/recommend", json={"user_id": "newbie", "k": 5}).json()["items"]
            assert [r["item_id"][0] for r in recs].count("s") >= 4, "B recommends from A's events"
            # a dislike through A: B never recommends that item again
            top = recs[0]["item_id"]
            ha.post("/events", json={"user_id": "newbie", "item_id": top, "type": "dislike"})
            _until(lambda: top not in [r["item_id"] for r in hb.post(
                "/recommend", json={"user_id": "newbie", "k": 30}).json()["items"]], BOUND_S)
            # an item added through A is served by B
            assert ha.put("/items/new1", json={"title": "Alien Worlds 99"}).status_code == 200
            _until(lambda: hb.get("/items/new1").status_code == 200, BOUND_S)
            assert hb.post("/events", json={"user_id": "newbie", "item_id": "new1", "type": "view"}
                           ).status_code == 200, "B accepts events for A's new item"
            _until(lambda: (_history(ha, "newbie") or [""])[-1] == "new1", BOUND_S)
            # relations set through A: B recommends to the related newcomer at once (from_relations)
            assert ha.put("/users/friend/relations", json=["newbie"]).status_code == 200
            _until(lambda: hb.post("/recommend", json={"user_id": "friend"}).status_code == 200, BOUND_S)
            assert hb.post("/recommend", json={"user_id": "friend"}).json()["from_relations"] == 1
            # a delete through B: A answers 404 for the user
            assert ha.post("/recommend", json={"user_id": "u3"}).status_code == 200
            assert hb.delete("/users/u3").json()["erased"] is True
            _until(lambda: ha.post("/recommend", json={"user_id": "u3"}).status_code == 404, BOUND_S)
            assert ha.get("/users/u3/history").status_code == 404
            assert ha.delete("/users/u3").status_code == 404, "already forgotten, in every replica"
            assert ha.get("/health").json()["events"] == hb.get("/health").json()["events"] == 5
            print(f"\nevent via A seen by B after {lag * 1e3:.1f} ms")
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)


def test_postgres_lost_mid_run_and_back(files, tmp_path):
    cluster = Cluster()
    try:
        url = cluster.new_database()
        pa, pb = free_port(), free_port()
        a = start_server(_args(files, tmp_path / "state", url), pa, ENV)
        b = start_server(_args(files, tmp_path / "state", url), pb, ENV)
        ha = httpx.Client(base_url=f"http://127.0.0.1:{pa}", headers=AUTH, timeout=10)
        hb = httpx.Client(base_url=f"http://127.0.0.1:{pb}", headers=AUTH, timeout=10)
        try:
            acked = []
            for j in range(10):
                r = ha.post("/events", json={"user_id": "u1", "item_id": f"c{j}", "type": "view",
                                             "event_id": f"before{j}"})
                assert r.status_code == 200
                acked.append(f"before{j}")
            cluster.stop()
            r = ha.post("/events", json={"user_id": "u1", "item_id": "g1", "type": "like", "event_id": "down"})
            assert r.status_code == 503 and r.json()["field"] == "store", r.text
            assert "unavailable" in r.json()["error"] and "postgresql://postgres@" in r.json()["error"]
            assert r.headers["retry-after"] == "1"
            assert ha.put("/items/x", json={"title": "X"}).status_code == 503
            assert ha.delete("/users/u2").status_code == 503
            # reads of what the replica holds go on
            assert ha.post("/recommend", json={"user_id": "u1"}).status_code == 200
            assert _history(ha, "u1")[-1] == "c9"
            health = ha.get("/health").json()
            assert health["status"] == "ok" and health["events"] is None and "unavailable" in health["store"]
            cluster.start()

            def stored():
                r = ha.post("/events", json={"user_id": "u1", "item_id": "g1", "type": "like", "event_id": "back"})
                return r.status_code == 200
            _until(stored, 15)
            acked.append("back")
            events = [e["event_id"] for e in ha.get("/users/u1/events").json()["events"]]
            assert set(acked) <= set(events) and len(events) == len(set(events))
            # B's feed reconnected: what A is told now, B answers (and it resynced what it missed)
            ha.post("/events", json={"user_id": "fresh", "item_id": "s3", "type": "like"})
            _until(lambda: _history(hb, "fresh") == ["s3"], 15)
            assert _history(hb, "u1")[-1] == "g1"
        finally:
            ha.close()
            hb.close()
            for p in (a, b):
                p.kill()
                p.wait(10)
    finally:
        cluster.destroy()


def _serve(args, env=None, timeout=120):
    env = {**os.environ, "PYTHONPATH": SRC, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "llmrec.cli", "serve", *args, "--port", str(free_port())],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_postgres_down_at_start_is_one_clear_line(files, tmp_path):
    url = "postgresql://llmrec:hunter2@127.0.0.1:1/llmrec"
    r = _serve(_args(files, tmp_path / "state", url)[:-2], env={"LLMREC_DATABASE": url})
    assert r.returncode == 2, r.stderr
    assert "cannot connect to the store postgresql://llmrec:***@127.0.0.1:1/llmrec" in r.stderr
    assert "hunter2" not in r.stderr and "Traceback" not in r.stderr


def test_newer_schema_refused_at_start(files, tmp_path, pg_url):
    from llmrec.pgstore import MIGRATIONS, PgStore
    PgStore(pg_url, tmp_path / "state").close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    r = _serve(_args(files, tmp_path / "state", pg_url))
    assert r.returncode == 2
    assert "schema version 7 was written by a newer llmrec; this llmrec" in r.stderr
    assert f"up to {len(MIGRATIONS)}" in r.stderr


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def test_workers_share_one_port_and_the_store(files, tmp_path, pg_url):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "TQDM_DISABLE": "1", **ENV}
    proc = subprocess.Popen([sys.executable, "-m", "llmrec.cli", "serve", *_args(files, tmp_path / "s", pg_url),
                             "--port", str(port), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 or any(not _alive(url) for _ in range(4)):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        assert len(_children(proc.pid)) == 2
        # each connection may reach either process: all answer from one state within the bound
        httpx.post(url + "/events", headers=AUTH, json={"user_id": "w", "item_id": "g2", "type": "like"})
        time.sleep(BOUND_S)
        for _ in range(20):
            with httpx.Client(base_url=url, headers=AUTH) as h:  # a new connection each time
                assert _history(h, "w") == ["g2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0 and not _children(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def _alive(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_workers_need_a_shared_store(files, tmp_path):
    items, inter = files
    r = _serve(["--items", str(items), "--interactions", str(inter), "--model", "itemknn", "--workers", "2"],
               env={"LLMREC_DATABASE": ""})
    assert r.returncode == 2 and "--workers: several processes need a shared store" in r.stderr, r.stderr
