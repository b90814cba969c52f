"""Hostile search queries into the page store, and hostile requests into the HTTP service (seeded fuzz).

Properties: PageStore.search and get take any string; the service answers every request (no dropped connection)
with a 200 or a 4xx whose JSON body names the problem, never a 5xx (the one exception is the standard 505 for a
request in an HTTP major version the server does not speak); a keep-alive connection never loses its framing; after
the storm /health is ok, a normal search answers what the store answers, and no handler thread is left behind.
LITERE_FUZZ_CASES sets the cases per target (default 300).
"""
import http.client
import json
import math
import random
import re
import socket
import threading
import time

import pytest
from test_fuzz_tools import CASES, URLS, build_store, file_digest, hostile_text, hostile_value

from litere.env import EnvSettings, LocalEnv, PageStore, make_server
from litere.env.service import MAX_BATCH_QUERIES, MAX_BODY_BYTES

SETTINGS = EnvSettings.compact()
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_service") / "world.db"
    build_store(path)
    return path


@pytest.fixture(scope="module")
def server(fuzz_db):
    store = PageStore(fuzz_db, readonly=True)
    srv = make_server(LocalEnv(store, SETTINGS), host="127.0.0.1", port=0, request_timeout=1.0)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    store.close()


# --- the store ------------------------------------------------------------------------------------------------
def test_store_search_and_get_take_any_string(fuzz_db):
    digest = file_digest(fuzz_db)
    rng = random.Random(7)
    stores = [PageStore(fuzz_db), PageStore(fuzz_db, readonly=True)]
    hits_seen = 0
    for case in range(CASES):
        store = stores[case % 2]
        query = hostile_text(rng)
        limit = rng.choice([1, 3, 10, 100, 0, -1])
        hits = store.search(query, limit=limit, snippet_words=rng.choice([1, 5, 25]))
        assert len(hits) <= max(limit, 0) and len({h.link for h in hits}) == len(hits)
        for h in hits:
            assert h.link in URLS and math.isfinite(h.score)
            json.dumps([h.title, h.snippet], ensure_ascii=False).encode()
        hits_seen += len(hits)
        page = store.get(rng.choice([query, rng.choice(URLS), rng.choice(URLS) + "\ud800"]))
        assert page is None or page.url in URLS
    assert hits_seen > CASES   # the fuzz reaches the index
    page = stores[1].get(URLS[7])
    assert stores[1].search(page.title, limit=1)[0].link == URLS[7]   # a normal search still answers
    for store in stores:
        store.close()
    assert file_digest(fuzz_db) == digest


# --- the service: structured requests -------------------------------------------------------------------------
ENDPOINTS = ["/search", "/batch_search", "/query"]
ODD_PATHS = ["/", "/nope", "/search/", "/search?x=1", "//search", "/%00", "/" + "a" * 3000, "/health?x=1",
             "*", "/../etc/passwd", "/query%20", "/SEARCH", "/health/.."]


def json_bytes(value, rng) -> bytes:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def random_request(rng: random.Random):
    """(method, path, body, headers, expect): expect is "ok" (200), "4xx", or "either"."""
    method = rng.choices(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "get", "HEAD"],
                         [70, 12, 2, 2, 2, 2, 2, 2, 2, 4])[0]
    path = rng.choice(ENDPOINTS) if rng.random() < 0.85 else rng.choice(ODD_PATHS + ["/health"])
    headers = {"Content-Type": rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"])}
    r = rng.random()
    expect = "either"
    if r < 0.35:   # the right shape, hostile strings
        if path == "/search":
            body = {"query": hostile_text(rng)}
        elif path == "/batch_search":
            body = {"queries": [hostile_text(rng) for _ in range(rng.randint(0, 4))]}
        elif path == "/query":
            body = {"url": rng.choice([hostile_text(rng), rng.choice(URLS)]),
                    rng.choice(["goal", "question"]): hostile_text(rng) + "x"}
        else:
            body = {}
        if rng.random() < 0.5:
            body["limit"] = rng.choice([1, 3, 10, 0, -5, 10 ** 6])
        if rng.random() < 0.2:
            body["search_type"] = hostile_value(rng)
        raw, expect = json_bytes(body, rng), "ok"
    elif r < 0.6:   # the wrong types
        if rng.random() < 0.7:
            body = {"/search": {"query": rng.choice([None, 3, 1.5, True, [], {}, ["kalo"]])},
                    "/batch_search": {"queries": rng.choice([None, 3, "kalo", [3], ["kalo", 3], [["kalo"]], {}])},
                    "/query": {"url": rng.choice([None, 3, [], {}, ["u"]]), "goal": "g"}}.get(path, {})
        else:   # a wrong limit (/query has none)
            body = {"/search": {"query": "kalo"}, "/batch_search": {"queries": ["kalo"]}}.get(path, {"url": 3})
            body["limit"] = rng.choice(["3", 1.5, None, [], True, float("nan"), float("inf"), {"n": 3}])
        raw, expect = json_bytes(body, rng), "4xx"
    elif r < 0.7:   # JSON that is not an object
        raw, expect = json_bytes(rng.choice([[], [1, 2], "search", 3, None, True, [{"query": "kalo"}]]), rng), "4xx"
    elif r < 0.85:   # not JSON at all
        valid = json_bytes({"query": "kalo ven"}, rng)
        raw = rng.choice([valid[: rng.randint(1, len(valid) - 1)], b"\xff\xfe\x00garbage", b"{'query': 'kalo'}",
                          bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))), b"query=kalo",
                          b'{"query": "\xff\xfe"}', b"\x00" * 10, b"NaN", b'{"query": "kalo"} trailing'])
        expect = "4xx"
    elif r < 0.92:   # nested deeper than any recursion limit, or integers past the digit limit
        depth = rng.choice([100, 5_000, 100_000])
        raw = rng.choice([b"[" * depth, b'{"query": ' + b"[" * depth + b"]" * depth + b"}",
                          b'{"query": "kalo", "limit": ' + b"9" * 5_000 + b"}", b"{" * depth])
        expect = "4xx"
    elif r < 0.96:   # empty
        raw, expect = b"", "4xx"
    else:   # huge
        raw = rng.choice([json_bytes({"query": "kalo ven " * 150_000}, rng),
                          json_bytes({"queries": ["kalo"] * (MAX_BATCH_QUERIES + 1)}, rng),
                          json_bytes({"url": "u" * 1_000_000, "goal": "g" * 1_000_000}, rng)])
        expect = "either"
    if path not in ENDPOINTS or method not in ("POST", "HEAD"):
        expect = "4xx"
    if method == "GET" and path.split("?")[0] == "/health":
        expect = "ok"
    if method == "HEAD":
        expect = "4xx"
    return method, path, raw, headers, expect


REPLY_KEYS = {"/search": {"results", "total", "search_time"}, "/batch_search": {"query_results", "total_queries",
                                                                               "search_time"},
              "/query": {"success", "result", "from_cache", "error"}, "/health": {"status", "pages", "env_settings"}}


def check_reply(method, path, expect, status, data, case):
    where = f"case {case}: {method} {path[:40]} -> {status} {data[:200]!r}"
    assert status == 200 or 400 <= status < 500, where
    assert expect == "either" or (status == 200) == (expect == "ok"), where
    if method == "HEAD":
        return
    payload = json.loads(data)
    if status == 200:
        assert set(payload) == REPLY_KEYS[path.split("?")[0]], where
    else:
        assert isinstance(payload.get("error"), str) and payload["error"], where


def test_service_answers_hostile_requests_with_a_4xx(server, fuzz_db):
    rng = random.Random(11)
    baseline_threads = threading.active_count()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    statuses = {}
    for case in range(CASES):
        method, path, raw, headers, expect = random_request(rng)
        try:
            conn.request(method, path, body=raw, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError) as e:   # a dropped connection or a broken reply
            pytest.fail(f"case {case}: {method} {path[:40]} ({len(raw)} bytes): {type(e).__name__}: {e}")
        check_reply(method, path, expect, response.status, data, case)
        statuses[response.status] = statuses.get(response.status, 0) + 1
    conn.close()
    assert statuses.get(200, 0) > CASES // 10 and len(statuses) >= 4, statuses
    check_healthy(server, fuzz_db, baseline_threads)
    print(f"fuzz service: {CASES} requests, statuses {dict(sorted(statuses.items()))}")


def check_healthy(server, fuzz_db, baseline_threads):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    assert (health["status"], health["pages"]) == ("ok", len(URLS))
    env = LocalEnv(PageStore(fuzz_db, readonly=True), SETTINGS)
    expected = [h.to_dict() for h in env.search_hits("kalo ven river 17")]
    conn.request("POST", "/search", body=json.dumps({"query": "kalo ven river 17"}))
    assert expected and json.loads(conn.getresponse().read())["results"] == expected
    conn.request("POST", "/batch_search", body=json.dumps({"queries": ["kalo ven river 17", "zzz"]}))
    assert [q["results"] for q in json.loads(conn.getresponse().read())["query_results"]] == [expected, []]
    conn.request("POST", "/query", body=json.dumps({"url": URLS[5], "goal": "founded"}))
    assert json.loads(conn.getresponse().read())["result"] == env.visit(URLS[5], "founded")
    env.close()
    conn.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline_threads and time.monotonic() < deadline:
        time.sleep(0.05)   # handler threads end once their connections close
    assert threading.active_count() <= baseline_threads


# --- the service: raw bytes on the socket ---------------------------------------------------------------------
def exchange(port: int, data: bytes, *, half_close: bool = True, wait: float = 10.0) -> bytes:
    """Send data, (optionally) end our side, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def replies(raw: bytes) -> list[tuple[int, dict]]:
    """The (status, JSON body) of each response in a byte stream."""
    out, pos = [], 0
    while pos < len(raw):
        head_end = raw.index(b"\r\n\r\n", pos)
        head = raw[pos:head_end]
        status = int(STATUS_LINE.match(head).group(1))
        length = int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1))
        body = raw[head_end + 4: head_end + 4 + length]
        out.append((status, json.loads(body) if body else {}))
        pos = head_end + 4 + length
    return out


POST = b"POST /search HTTP/1.1\r\nHost: x\r\n"
SEARCH = b'{"query": "kalo"}'
RAW_CASES = [  # (bytes, half close, the statuses expected in order)
    (b"GARBAGE\r\n\r\n", True, [400]),
    (b"\x00\xff\xfe garbage\r\n\r\n", True, [400]),
    (POST + b"Content-Length: -1\r\n\r\n{}", False, [400]),
    (POST + b"Content-Length: abc\r\n\r\n{}", False, [400]),
    (POST + b"Content-Length: 1e3\r\n\r\n{}", False, [400]),
    (POST + b"Content-Length: 99999999999999999999999\r\n\r\n", False, [413]),
    (POST + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode(), False, [413]),
    (POST + b"Content-Length: 40\r\n\r\n" + SEARCH, True, [400]),    # the body ends early
    (POST + b"Content-Length: 40\r\n\r\n" + SEARCH, False, [408]),   # the body never comes
    (POST + b"Content-Length: 2\r\nContent-Length: 17\r\n\r\n{}", True, [400]),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n11\r\n" + SEARCH + b"\r\n0\r\n\r\n", True, [411]),
    (POST + b"Content-Length: 5\r\n\r\n\xff\xfe\x00\x01\x02", True, [400]),
    (POST + b"\r\n", True, [400]),   # no body: '{}' has no query
    (b"POST /search HTTP/9.9\r\n\r\n", True, [505]),
    (b"POST /search HTTP/1.x\r\n\r\n", True, [400]),
    (b"POST /search\r\n\r\n", True, [400]),
    (b"GET /health\r\n", True, [400]),    # HTTP/0.9
    (b"POST /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", True, [414]),
    (POST + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n", True, [431]),
    (POST + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", True, [431]),
    (b"PUT /search HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", True, [405]),
    (b"FOO /search HTTP/1.1\r\n\r\n", True, [405]),
    (b"DELETE /health HTTP/1.1\r\n\r\n", True, [405]),
    (b"GET /search HTTP/1.1\r\n\r\n", True, [404]),
    (b"\r\n\r\nGET /health HTTP/1.1\r\n\r\n", True, [200]),   # empty lines before a request are ignored
    # keep-alive framing: a body on a GET is read, and the next request is answered
    (b"GET /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /health HTTP/1.1\r\n\r\n", True, [200, 200]),
    (POST + b"Content-Length: 17\r\n\r\n" + SEARCH + POST + b"Content-Length: 2\r\n\r\n{}", True, [200, 400]),
    (POST + b"Content-Length: 2\r\n\r\n{}garbage\r\n\r\n", True, [400, 400]),
    (POST + b"Content-Length: 17\r\nExpect: 100-continue\r\n\r\n" + SEARCH, True, [100, 200]),
    (POST + b"Content-Length: 17\r\nConnection: close\r\n\r\n" + SEARCH + b"GET /health HTTP/1.1\r\n\r\n",
     True, [200]),
]


@pytest.mark.parametrize("data,half_close,expected", RAW_CASES, ids=[str(i) for i in range(len(RAW_CASES))])
def test_service_answers_broken_http(server, data, half_close, expected):
    raw = exchange(server.server_address[1], data, half_close=half_close)
    if expected[0] == 100:   # the interim reply has no body
        assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        raw, expected = raw[len(b"HTTP/1.1 100 Continue\r\n\r\n"):], expected[1:]
    got = replies(raw)
    assert [status for status, _ in got] == expected, raw[:300]
    for status, body in got:
        assert status == 200 or isinstance(body.get("error"), str) and body["error"]


def test_service_answers_mangled_requests(server, fuzz_db):
    """Valid requests with bytes flipped, inserted or cut: every one gets an answer (a status line and a JSON body)
    or, when no request line ever arrived, a plain close; never a 5xx other than 505."""
    rng = random.Random(5)
    baseline_threads = threading.active_count()
    port = server.server_address[1]
    templates = [POST + b"Content-Length: 17\r\n\r\n" + SEARCH,
                 b"POST /batch_search HTTP/1.1\r\nContent-Length: 21\r\n\r\n" + b'{"queries": ["kalo"]}',
                 b"POST /query HTTP/1.1\r\nContent-Length: 46\r\n\r\n"
                 + json.dumps({"url": URLS[3], "goal": "founded"}).encode(),
                 b"GET /health HTTP/1.1\r\n\r\n"]
    answered, statuses = 0, {}
    for case in range(max(20, CASES // 5)):
        data = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data) + 1)
            m = rng.random()
            if m < 0.3:
                data[i: i + 1] = bytes([rng.randrange(256)])
            elif m < 0.6:
                data[i:i] = rng.choice([b"\r\n", b" ", b":", b"\x00", b"-1", b"9" * 30, b"\xff", b"HTTP/1.1"])
            elif m < 0.8:
                del data[i: i + rng.randint(1, 5)]
            else:
                data = data[:i]
        raw = exchange(port, bytes(data))
        if not raw:   # nothing came back: only when nothing but blank lines was sent
            assert not bytes(data).strip(), bytes(data)
            continue
        for status, body in replies(raw):
            assert status in (100, 200, 505) or 400 <= status < 500, (bytes(data), raw[:300])
            assert status in (100, 200) or body.get("error"), raw[:300]
            statuses[status] = statuses.get(status, 0) + 1
        answered += 1
    assert answered > 0
    print(f"fuzz mangled: {max(20, CASES // 5)} requests, {answered} answered, "
          f"statuses {dict(sorted(statuses.items()))}")
    check_healthy(server, fuzz_db, baseline_threads)


def test_visit_cache_and_batches_are_bounded(server):
    from litere.env.service import _VisitCache
    cache = _VisitCache(capacity=100, max_chars=16_000)
    for i in range(50):
        cache.put((f"u{i}", "g"), "x" * 900)
    cache.put(("huge", "g"), "x" * 2_000)   # over a sixteenth of the budget: not kept
    assert cache._chars <= 16_000 and len(cache._items) < 50 and cache.get(("huge", "g")) is None
    assert cache.get(("u49", "g")) == "x" * 900 and cache.get(("u0", "g")) is None
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.request("POST", "/batch_search", body=json.dumps({"queries": ["kalo"] * (MAX_BATCH_QUERIES + 1)}))
    response = conn.getresponse()
    assert response.status == 400 and "at most" in json.loads(response.read())["error"]
    conn.request("POST", "/batch_search", body=json.dumps({"queries": ["kalo"] * MAX_BATCH_QUERIES, "limit": 1}))
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["total_queries"] == MAX_BATCH_QUERIES
    conn.close()
