"""The environment service under concurrent load (a short run of benchmarks/bench_env_load.py) and the bounded
connection pool behind it. The full run (64 clients, 60 s) is `python benchmarks/bench_env_load.py`."""
import http.client
import json
import random
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_env_load as load  # noqa: E402

from litere.env import PageStore  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return load.build_world(tmp_path_factory.mktemp("load"), 2000)


def test_service_serves_16_clients_for_3_s_without_an_error(world):
    db, sample = world
    server = load.Server(db)
    try:
        start = server.memory()
        results, wall = load.run_load(server.port, sample, clients=16, seconds=3.0, procs=0, keepalive=None)
        end = server.memory()
        time.sleep(0.5)
        threads = server.status("Threads")
        assert load.healthy(server.port, sample)
    finally:
        server.stop()
    s = load.summarize(results, wall)
    assert s["errors"] == 0, s["first_errors"]
    assert s["requests"] >= 16 and all(s[kind]["requests"] > 0 for kind in load.KINDS)
    assert not [line for line in server.stderr if "Traceback" in line]
    assert threads <= 2   # the handler threads are gone with their connections
    assert end["anon_kb"] - start["anon_kb"] < 256 * 1024, (start, end)
    print(f"load: {s['requests']} requests, {s['requests_per_s']:.0f}/s, p50 {s['p50_ms']:.1f} ms, "
          f"p99 {s['p99_ms']:.1f} ms, memory {start} -> {end}")


def test_keep_alive_replies_are_not_held_back_by_nagle(world):
    """Headers and body leave in two writes; without TCP_NODELAY every keep-alive reply waited ~40 ms for the
    client's delayed ACK."""
    db, sample = world
    server = load.Server(db)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        latencies = []
        for i in range(30):
            start = time.perf_counter()
            conn.request("POST", "/search", body=json.dumps({"query": " ".join(sample[i][1][:2])}))
            assert conn.getresponse().read()
            latencies.append(time.perf_counter() - start)
        conn.close()
    finally:
        server.stop()
    assert sorted(latencies)[15] < 0.030, latencies


def test_the_store_lends_at_most_max_connections(world):
    db, sample = world
    queries = [" ".join(title[:2]) for _, title, _ in sample[:64]]
    store = PageStore(db, readonly=True, max_connections=2)
    expected = [store.search(q) for q in queries]
    got, errors = {}, []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(20):
                i = rng.randrange(len(queries))
                got.setdefault(i, []).append(store.search(queries[i]))
        except Exception as e:   # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(r == expected[i] for i, rs in got.items() for r in rs)
    assert store._idle.qsize() <= 2   # every connection ever opened is back in the pool
    store.close()
    with PageStore(db, readonly=True) as default:
        assert default.max_connections >= 4
