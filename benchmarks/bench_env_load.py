"""The environment service under load: concurrent loopback clients sending mixed search / visit requests.

The server is `python -m litere.env serve` in its own process (so its resident memory is read from /proc), on
127.0.0.1 with an ephemeral port, over a synthetic corpus (benchmarks/bench_env.py's: 100-300-word Zipf pages).
Each client sends one request at a time, as an agent's tool calls do: 40% /batch_search with 1-3 topical queries
(HttpEnv's search), 20% /search, 40% /query (a visit: 90% stored pages, 10% unknown URLs). Every reply is checked
(status 200, the endpoint's keys, a visit's success as expected); anything else, or a transport error, is an error.
By default each request opens its own connection, as urllib (HttpEnv) does; --keepalive reuses one per client.
Clients run as threads in --procs processes (0: in this process).

    python benchmarks/bench_env_load.py [--clients 64] [--seconds 60] [--pages 20000] [--procs 2] [--keepalive]
Prints requests/s, p50 / p99 latency per kind, errors, the server's RSS (start, after warm-up, end, max) and
threads, the machine and its load average; last, one JSON line.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_env import machine, percentile, write_corpus  # noqa: E402

from litere.env import ingest  # noqa: E402

KINDS = ("batch_search", "search", "query")


# --- the server ------------------------------------------------------------------------------------------------
class Server:
    """`python -m litere.env serve` in a subprocess; its stderr is drained (and kept) in a thread."""

    def __init__(self, db: Path, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "litere.env", "serve", "--db", str(db), "--host",
                                      "127.0.0.1", "--port", "0", *extra], cwd=ROOT, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        first = self.proc.stderr.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)", first)
        if found is None:
            self.stop()
            raise RuntimeError(f"the server did not start: {first!r}")
        self.url = found.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def status(self, field: str) -> int:
        """A field of /proc/<pid>/status (VmRSS, RssAnon, RssFile in kB; Threads)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def memory(self) -> dict:
        """Resident memory in kB: rss (VmRSS; counts a file page once per mapping, and every pooled SQLite
        connection maps the page store), anon (the process's own memory), pss (shared pages divided among
        their mappers)."""
        out = {"rss_kb": self.status("VmRSS"), "anon_kb": self.status("RssAnon")}
        try:
            for line in Path(f"/proc/{self.proc.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out["pss_kb"] = int(line.split()[1])
        except OSError:
            pass
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def build_world(workdir: Path, pages: int) -> tuple[Path, list]:
    corpus, db = workdir / "corpus.jsonl", workdir / "world.db"
    sample = write_corpus(corpus, pages)
    ingest(db, [corpus], progress=False)
    return db, sample


# --- the clients -----------------------------------------------------------------------------------------------
def make_request(rng: random.Random, sample: list) -> tuple[str, dict, bool | None]:
    """(kind, body, whether a visit should succeed)."""
    def topical():
        _, title, text = rng.choice(sample)
        return " ".join(rng.sample(title[:2], rng.randint(1, 2)) + rng.sample(text, rng.randint(1, 3)))

    r = rng.random()
    if r < 0.4:
        return "batch_search", {"queries": [topical() for _ in range(rng.randint(1, 3))], "limit": 10,
                                "search_type": "hybrid"}, None
    if r < 0.6:
        return "search", {"query": topical(), "limit": 10}, None
    url, _, text = rng.choice(sample)
    hit = rng.random() < 0.9
    goal = "find " + " ".join(rng.sample(text, 2))
    return "query", {"url": url if hit else url + "/missing", "goal": goal}, hit


def check(kind: str, status: int, data: bytes, hit: bool | None) -> str | None:
    if status != 200:
        return f"{kind}: status {status}: {data[:200]!r}"
    reply = json.loads(data)
    if kind == "batch_search" and not isinstance(reply.get("query_results"), list):
        return f"{kind}: no query_results"
    if kind == "search" and not isinstance(reply.get("results"), list):
        return f"{kind}: no results"
    if kind == "query" and (reply.get("success") is not hit or not reply.get("result")):
        return f"{kind}: success {reply.get('success')}, expected {hit}"
    return None


def client_loop(port: int, sample: list, seed: int, start: float, deadline: float, keepalive: bool, out: list):
    rng = random.Random(seed)
    conn = None
    time.sleep(max(0.0, start - time.time()))
    while time.time() < deadline:
        kind, body, hit = make_request(rng, sample)
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if not keepalive:
            headers["Connection"] = "close"
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/" + kind, body=data, headers=headers)
            response = conn.getresponse()
            error = check(kind, response.status, response.read(), hit)
        except Exception as e:   # a refused, reset or timed-out connection, a reply that is not JSON
            error = f"{kind}: {type(e).__name__}: {e}"
            conn.close()
            conn = None
        if not keepalive and conn is not None:
            conn.close()
            conn = None
        out.append((kind, time.perf_counter() - start, error))
    if conn is not None:
        conn.close()


def run_threads(port: int, sample: list, clients: int, first_seed: int, start: float, deadline: float,
                keepalive) -> list:
    """keepalive: True, False, or None (alternate between clients)."""
    out: list = []
    threads = [threading.Thread(target=client_loop, args=(port, sample, first_seed + i, start, deadline,
                                                          bool(i % 2) if keepalive is None else keepalive, out))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def run_load(port: int, sample: list, clients: int, seconds: float, procs: int = 0, keepalive=False,
             on_tick=None) -> tuple[list, float]:
    """All (kind, latency s, error or None) of `clients` clients for `seconds` (counted from when every client
    process is up), and the wall time they ran. on_tick(elapsed) is called about once a second meanwhile."""
    start = time.time() + (3.0 if procs > 0 else 0.0)   # room for the client processes to start
    deadline = start + seconds

    def ticks(running):
        while running():
            time.sleep(1.0)
            if on_tick and time.time() > start:
                on_tick(time.time() - start)

    if procs <= 0:
        results: list = []
        runner = threading.Thread(target=lambda: results.extend(run_threads(port, sample, clients, 0, start,
                                                                            deadline, keepalive)))
        runner.start()
        ticks(runner.is_alive)
        return results, time.time() - start
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    seeds = [sum(shares[:i]) for i in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pending = pool.starmap_async(run_threads, [(port, sample, n, s, start, deadline, keepalive)
                                                   for n, s in zip(shares, seeds)])
        ticks(lambda: not pending.ready())
        results = [row for part in pending.get() for row in part]
    return results, time.time() - start


def summarize(results: list, wall: float) -> dict:
    errors = [e for _, _, e in results if e]
    lat = [t for _, t, _ in results]
    out = {"requests": len(results), "requests_per_s": len(results) / wall, "errors": len(errors),
           "first_errors": errors[:5], "p50_ms": 1e3 * percentile(lat, 50), "p99_ms": 1e3 * percentile(lat, 99),
           "max_ms": 1e3 * max(lat)}
    for kind in KINDS:
        k = [t for kd, t, _ in results if kd == kind]
        out[kind] = {"requests": len(k), "p50_ms": 1e3 * percentile(k, 50), "p99_ms": 1e3 * percentile(k, 99)}
    return out


def healthy(port: int, sample: list) -> bool:
    """/health says ok and a search for a page's title words finds that page."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    ok = json.loads(conn.getresponse().read()).get("status") == "ok"
    url, title, _ = sample[len(sample) // 2]
    conn.request("POST", "/search", body=json.dumps({"query": " ".join(title[:2])}))
    links = [r["link"] for r in json.loads(conn.getresponse().read())["results"]]
    conn.close()
    return ok and url in links


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--pages", type=int, default=20_000)
    p.add_argument("--procs", type=int, default=2, help="client processes (0: threads in this process)")
    p.add_argument("--keepalive", action="store_true", help="one connection per client (default: one per request)")
    args = p.parse_args()
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench_env_load_") as tmp:
        t = time.perf_counter()
        db, sample = build_world(Path(tmp), args.pages)
        print(f"world: {args.pages:,} pages in {time.perf_counter() - t:.1f} s")
        server = Server(db)
        try:
            memory = {"start": server.memory()}
            threads_start = server.status("Threads")
            warm = min(10.0, args.seconds / 6)
            peak = dict(memory["start"])

            series = []   # (seconds into the run, memory)

            def tick(elapsed):
                now = server.memory()
                series.append((round(elapsed, 1), now))
                for key, value in now.items():
                    peak[key] = max(peak.get(key, 0), value)
                if "warm" not in memory and elapsed >= warm:
                    memory["warm"] = now

            results, wall = run_load(server.port, sample, args.clients, args.seconds, args.procs, args.keepalive,
                                     on_tick=tick)
            memory["end"] = server.memory()
            memory["max"] = peak
            memory.setdefault("warm", memory["end"])
            time.sleep(1.0)
            threads_end = server.status("Threads")
            ok = healthy(server.port, sample)
            tracebacks = sum("Traceback" in line for line in server.stderr)
        finally:
            server.stop()
    s = summarize(results, wall)
    load = os.getloadavg()
    mode = "keep-alive" if args.keepalive else "a connection per request"
    print(f"\n{args.clients} clients x {args.seconds:g} s, {mode}, {args.procs or 'no'} client processes, "
          f"{args.pages:,} pages")
    print(f"{s['requests']:,} requests, {s['requests_per_s']:,.0f} requests/s, errors {s['errors']}, "
          f"latency p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.0f} ms")
    for kind in KINDS:
        k = s[kind]
        print(f"  {kind:<13} {k['requests']:>8,} requests  p50 {k['p50_ms']:6.1f} ms  p99 {k['p99_ms']:6.1f} ms")
    for e in s["first_errors"]:
        print(f"  error: {e}")
    def mib(point: str) -> str:
        m = memory[point]
        return (f"{m['rss_kb'] / 1024:.0f} / {m['anon_kb'] / 1024:.0f} / "
                f"{m.get('pss_kb', float('nan')) / 1024:.0f}")

    print(f"server memory in MiB, RSS / anonymous / PSS: start {mib('start')}, after {warm:.0f} s {mib('warm')}, "
          f"end {mib('end')}, max {mib('max')}")
    quarters = [min(series, key=lambda p: abs(p[0] - q * wall / 4)) for q in (1, 2, 3, 4)] if series else []
    print("  over the run: " + ", ".join(f"{t:.0f} s {m['rss_kb'] / 1024:.0f} / {m['anon_kb'] / 1024:.0f} / "
                                         f"{m.get('pss_kb', float('nan')) / 1024:.0f}" for t, m in quarters))
    print(f"server threads {threads_start} -> {threads_end} (1 s after the load); tracebacks in its log: "
          f"{tracebacks}; healthy after: {ok}")
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(json.dumps({"benchmark": "env_load", "machine": machine(), "clients": args.clients,
                      "seconds": args.seconds, "pages": args.pages, "procs": args.procs,
                      "keepalive": args.keepalive, **s, "server_memory": memory, "server_memory_series": series, "server_threads": [threads_start,
                                                                                                  threads_end],
                      "server_tracebacks": tracebacks, "healthy_after": ok, "loadavg_after": load}))
    return 0 if s["errors"] == 0 and ok and tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
