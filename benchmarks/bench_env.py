"""Embedded environment: ingest rate, search latency at two corpus sizes, visit latency.

Synthetic corpus: pages of 100-300 words drawn from a 50,000-word Zipf vocabulary, each titled by two rare
"entity" words and one common word. Topical queries are what an agent sends: one or two of a page's title words
plus one to three words of its text (recall@10 of that page is reported as a sanity check). Common-word queries
(three to five of the 200 most frequent words) show that the posting budget bounds the worst case.

    python benchmarks/bench_env.py [--quick] [--sizes 10000,100000] [--queries 1000]
Prints a table and, last, one JSON line. Goal on this machine: topical search p50 <= 10 ms, p99 <= 50 ms at
100k pages (the original service answered in 150 ms on 32M pages with a GPU embedder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from litere.env import EnvSettings, LocalEnv, PageStore, ingest  # noqa: E402

VOCAB = 50_000
SYLLABLES = ["ka", "lo", "ven", "tar", "mi", "ro", "sen", "dul", "pa", "gri", "bo", "ne", "chi", "fa", "tu", "ze",
             "wil", "mor", "ix", "ea", "qua", "dro", "pel", "sun"]


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"


def vocabulary(rng: random.Random, size: int) -> list[str]:
    words, seen = [], set()
    while len(words) < size:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def write_corpus(path: Path, n_pages: int, seed: int = 0) -> list[tuple[str, list[str], list[str]]]:
    """Write the corpus; return (url, title words, text words) of a sample of pages to build queries from."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(rng, VOCAB + 2 * n_pages))
    common, entities = vocab[:VOCAB], vocab[VOCAB:]
    cdf = np.cumsum(1.0 / np.arange(1, VOCAB + 1))
    cdf /= cdf[-1]
    lengths = nrng.integers(100, 301, n_pages)
    words = common[np.searchsorted(cdf, nrng.random(int(lengths.sum())))]
    sample_every = max(1, n_pages // 5000)
    sample, start = [], 0
    with open(path, "w") as f:
        for i, n in enumerate(lengths):
            text = words[start: start + n].tolist()
            start += n
            title = [entities[2 * i], entities[2 * i + 1], text[0]]
            f.write(json.dumps({"url": f"https://bench.example/{i}", "title": " ".join(title),
                                "doc": " ".join(text)}) + "\n")
            if i % sample_every == 0:
                sample.append((f"https://bench.example/{i}", title, text))
    return sample


def topical_queries(sample, n: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        url, title, text = rng.choice(sample)
        words = rng.sample(title[:2], rng.randint(1, 2)) + rng.sample(text, rng.randint(1, 3))
        out.append((" ".join(words), url))
    return out


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def timed(fn, items) -> tuple[list[float], list]:
    lat, results = [], []
    for item in items:
        t = time.perf_counter()
        results.append(fn(item))
        lat.append(time.perf_counter() - t)
    return lat, results


def bench_size(n_pages: int, n_queries: int, workdir: Path) -> dict:
    corpus = workdir / f"corpus_{n_pages}.jsonl"
    db = workdir / f"store_{n_pages}.db"
    sample = write_corpus(corpus, n_pages)
    report = ingest(db, [corpus], progress=False)
    rng = random.Random(1)
    store = PageStore(db, readonly=True)
    env = LocalEnv(store, EnvSettings())
    topical = topical_queries(sample, n_queries, rng)
    env.search_hits(topical[0][0])   # warm the page cache
    lat_topical, hits = timed(lambda q: env.search_hits(q[0]), topical)
    recall = sum(url in [h.link for h in found] for (_, url), found in zip(topical, hits)) / len(topical)
    common_vocab = vocabulary(random.Random(0), 200)   # the same first words as the corpus's most frequent
    common = [" ".join(rng.sample(common_vocab, rng.randint(3, 5))) for _ in range(n_queries)]
    lat_common, _ = timed(env.search_hits, common)
    lat_tool, _ = timed(lambda q: env.search([q[0], q[0] + " x"]), topical[: n_queries // 4])
    visits = [(url, "find " + " ".join(rng.sample(text, 3))) for url, _, text in rng.sample(sample, min(len(sample),
                                                                                                       n_queries))]
    lat_visit, _ = timed(lambda v: env.visit(v[0], v[1]), visits)
    store.close()
    return {
        "pages": n_pages, "ingest_pages_per_s": report.added / report.seconds, "ingest_s": report.seconds,
        "db_mb": db.stat().st_size / 2**20,
        "search_p50_ms": 1e3 * percentile(lat_topical, 50), "search_p99_ms": 1e3 * percentile(lat_topical, 99),
        "recall_at_10": recall,
        "common_p50_ms": 1e3 * percentile(lat_common, 50), "common_p99_ms": 1e3 * percentile(lat_common, 99),
        "tool_2q_p50_ms": 1e3 * percentile(lat_tool, 50),
        "visit_p50_ms": 1e3 * percentile(lat_visit, 50), "visit_p99_ms": 1e3 * percentile(lat_visit, 99),
    }


def long_page_visit_ms(workdir: Path) -> float:
    """One visit of a 200,000-word page (cut to 24,000 words before summarising)."""
    rng = random.Random(2)
    vocab = vocabulary(rng, 5000)
    text = ". ".join(" ".join(rng.choices(vocab, k=20)) for _ in range(10_000))
    store = PageStore(workdir / "long.db")
    store.add_pages([("https://bench.example/long", "Long page", text)])
    env = LocalEnv(store)
    lat, _ = timed(lambda _: env.visit("https://bench.example/long", "find " + vocab[7]), range(5))
    store.close()
    return 1e3 * percentile(lat, 50)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5k and 20k pages, 300 queries")
    p.add_argument("--sizes", default=None, help="comma-separated corpus sizes (default 10000,100000)")
    p.add_argument("--queries", type=int, default=None)
    args = p.parse_args()
    sizes = [int(s) for s in (args.sizes or ("5000,20000" if args.quick else "10000,100000")).split(",")]
    n_queries = args.queries or (300 if args.quick else 1000)
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_env_") as tmp:
        for n in sizes:
            rows.append(bench_size(n, n_queries, Path(tmp)))
        long_ms = long_page_visit_ms(Path(tmp))
    header = (f"{'pages':>8} {'ingest/s':>9} {'db MB':>7} {'search p50':>10} {'p99':>7} {'recall@10':>9} "
              f"{'common p50':>10} {'p99':>7} {'2-query call':>12} {'visit p50':>9} {'p99':>6}")
    print(f"\nsearch and visit latency in ms over {n_queries} queries each (topical and common-word queries, "
          f"10 results), one thread")
    print(header)
    for r in rows:
        print(f"{r['pages']:>8,} {r['ingest_pages_per_s']:>9,.0f} {r['db_mb']:>7.0f} {r['search_p50_ms']:>10.2f} "
              f"{r['search_p99_ms']:>7.2f} {r['recall_at_10']:>9.3f} {r['common_p50_ms']:>10.2f} "
              f"{r['common_p99_ms']:>7.2f} {r['tool_2q_p50_ms']:>12.2f} {r['visit_p50_ms']:>9.2f} "
              f"{r['visit_p99_ms']:>6.2f}")
    print(f"visit of a 200,000-word page (cut to 24,000 words): {long_ms:.1f} ms")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"search p50 grows x{b['search_p50_ms'] / a['search_p50_ms']:.1f} for x{b['pages'] / a['pages']:.0f} "
              f"pages")
    biggest = rows[-1]
    goal_met = biggest["pages"] >= 100_000 and biggest["search_p50_ms"] <= 10 and biggest["search_p99_ms"] <= 50
    print(json.dumps({"benchmark": "env", "machine": machine(), "quick": args.quick, "queries": n_queries,
                      "sizes": rows, "long_page_visit_ms": long_ms, "goal_met_at_100k": goal_met}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
