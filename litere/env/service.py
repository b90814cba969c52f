"""The environment as an HTTP service, with the request and response shapes of the original services.

  POST /search        {query, limit, search_type}  -> {results: [{link, title, snippet, score}], total, search_time}
  POST /batch_search  {queries, limit}             -> {query_results: [{query, results, total}], total_queries,
                                                       search_time}
  POST /query         {url, goal | question}       -> {success, result, from_cache, error}
  GET  /health                                     -> {status, pages, env_settings}
`search_type` is accepted and ignored (there is one index). /query's result is the finished visit text; for a
URL the store lacks, or a page the summariser failed on, it is the miss text with success false, as the original
browse service answers.

Any request the service cannot serve gets a 4xx whose JSON body {"error": ...} says why: a body that is not a JSON
object or holds the wrong types (400), an unknown path (404) or method (405), a body that does not arrive within
`request_timeout` (408), a chunked body (411), a body over MAX_BODY_BYTES (413), a batch over MAX_BATCH_QUERIES
queries (400). After an error that leaves the request's framing in doubt the connection is closed; otherwise it is
kept alive. Only a fault of the service itself answers 500 (and a request in HTTP/2 or later, the standard 505).
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .formats import visit_miss
from .local import LocalEnv
from .summarize import SummaryError

MAX_BODY_BYTES = 16 << 20
MAX_LIMIT = 100
MAX_BATCH_QUERIES = 1024
ENDPOINTS = "GET /health, POST /search, POST /batch_search, POST /query"
_DIGITS = re.compile(r"[0-9]+")


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _VisitCache:
    """Finished visit texts by (url, goal), least recently used dropped first, bounded in entries and characters
    (so that a few huge goals cannot fill the memory)."""

    def __init__(self, capacity: int, max_chars: int = 64 << 20):
        self.capacity = capacity
        self.max_chars = max_chars
        self._items: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(key: tuple[str, str], value: str) -> int:
        return len(key[0]) + len(key[1]) + len(value)

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: str) -> None:
        size = self._size(key, value)
        if size > self.max_chars // 16:   # one entry never takes more than a sixteenth
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._chars -= self._size(key, old)
            self._items[key] = value
            self._chars += size
            while len(self._items) > self.capacity or self._chars > self.max_chars:
                k, v = self._items.popitem(last=False)
                self._chars -= self._size(k, v)


class EnvServer(ThreadingHTTPServer):
    """request_timeout: seconds any one read or write of a connection may wait (a body that does not arrive in
    time is answered 408; an idle keep-alive connection is closed)."""
    daemon_threads = True
    request_queue_size = 128   # connections waiting to be accepted (many agents connect at once)

    def __init__(self, env: LocalEnv, address: tuple[str, int], *, cache_size: int = 4096, verbose: bool = False,
                 request_timeout: float = 60.0):
        super().__init__(address, _Handler)
        self.env = env
        self.pages = env.store.count()
        self.cache = _VisitCache(cache_size)
        self.verbose = verbose
        self.request_timeout = request_timeout

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return   # the client went away or stalled: nothing to report
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(env: LocalEnv, host: str = "127.0.0.1", port: int = 0, **kwargs) -> EnvServer:
    """A server bound to (host, port); port 0 picks a free one (see `server.url`). Run it with serve_forever()."""
    return EnvServer(env, (host, port), **kwargs)


def _limit(body: dict, default: int) -> int:
    limit = body.get("limit", default)
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise _BadRequest(f"'limit' must be an integer, got {limit!r:.100}")
    return max(1, min(limit, MAX_LIMIT))


def _string(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise _BadRequest(f"'{key}' must be a string, got {value!r:.100}")
    return value


def _json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise _BadRequest("the request body is nested too deeply") from None
    except UnicodeDecodeError as e:
        raise _BadRequest(f"the request body is not UTF-8 JSON ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise _BadRequest(f"the request body is not JSON ({e})") from None
    except ValueError:   # an integer literal past sys.get_int_max_str_digits()
        raise _BadRequest("the request body holds a number with too many digits") from None
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    return body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle's algorithm the body would wait for the client's delayed
    # ACK of the headers (40 ms per request on a keep-alive connection)
    disable_nagle_algorithm = True
    server: EnvServer

    def setup(self):
        self.timeout = self.server.request_timeout   # applied to the connection by StreamRequestHandler.setup
        super().setup()

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    # --- framing and errors ---
    def parse_request(self) -> bool:
        """The standard parse, after skipping empty lines before the request line (RFC 9112 section 2.2); then
        HTTP/0.9 and methods other than GET and POST are refused."""
        self._framed = False   # whether this request's body has been read, so the next request can follow
        for _ in range(16):
            if self.raw_requestline.strip() or not self.raw_requestline:
                break
            self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            return False
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 requests are not served; use HTTP/1.1")
            return False
        if self.command not in ("GET", "POST"):
            try:
                self._read_body()   # read, so the connection can stay open
            except _BadRequest as e:
                self._error(e.status, str(e))
                return False
            self._error(405, f"method {self.command!r:.50} is not allowed; the service answers {ENDPOINTS}",
                        {"Allow": "GET, POST"})
            return False
        return True

    def send_error(self, code, message=None, explain=None):
        """The standard library's errors (a request line or headers it cannot read) as JSON, like all others; the
        connection closes after them."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"   # so that the reply has a status line
        text = message or self.responses.get(code, ("error",))[0]
        if explain and code == 431:
            text += f" ({explain})"
        self.close_connection = True
        self.log_message("code %d, message %s", code, text)
        try:
            self._reply(code, {"error": text})
        except OSError:
            pass

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        if not self._framed:
            self.close_connection = True   # what is left of the request cannot be told from the next one
        self._reply(status, {"error": message}, headers)

    def _read_body(self) -> bytes:
        """The request body, read in full (Content-Length framing only)."""
        if self.headers.get("Transfer-Encoding"):
            raise _BadRequest("a Transfer-Encoding (chunked) body is not accepted; send Content-Length", 411)
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not lengths:
            self._framed = True
            return b""
        if len(lengths) > 1:
            raise _BadRequest("the request has conflicting Content-Length headers")
        (length,) = lengths
        if not _DIGITS.fullmatch(length):
            raise _BadRequest(f"Content-Length must be a non-negative integer, got {length!r:.50}")
        if len(length) > 18 or int(length) > MAX_BODY_BYTES:
            raise _BadRequest(f"request body over {MAX_BODY_BYTES} bytes", 413)
        try:
            raw = self.rfile.read(int(length))
        except TimeoutError:
            raise _BadRequest(f"the request body did not arrive within {self.server.request_timeout:g} s",
                              408) from None
        if len(raw) < int(length):
            raise _BadRequest(f"the request body ended after {len(raw)} of {length} bytes")
        self._framed = True
        return raw

    def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
        try:
            data = json.dumps(payload, ensure_ascii=False).encode()
        except UnicodeEncodeError:   # a lone surrogate (a JSON escape in the request can carry one): escape it
            data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # --- endpoints ---
    def do_GET(self):
        try:
            self._read_body()   # a GET may carry a body: read (and ignored), so the connection stays framed
        except _BadRequest as e:
            return self._error(e.status, str(e))
        if urlsplit(self.path).path == "/health":
            self._reply(200, {"status": "ok", "pages": self.server.pages,
                              "env_settings": self.server.env.settings.to_dict()})
        else:
            self._error(404, f"no such endpoint: GET {self.path:.200}; the service answers {ENDPOINTS}")

    def do_POST(self):
        routes = {"/search": self._search, "/batch_search": self._batch_search, "/query": self._query}
        route = routes.get(urlsplit(self.path).path)
        try:
            raw = self._read_body()
            if route is None:
                raise _BadRequest(f"no such endpoint: POST {self.path:.200}; the service answers {ENDPOINTS}", 404)
            reply = route(_json_body(raw))
        except _BadRequest as e:
            return self._error(e.status, str(e))
        except Exception as e:   # a fault of the service: keep serving; the client sees the cause
            return self._error(500, f"{type(e).__name__}: {e}")
        self._reply(200, reply)

    def _hits(self, query: str, limit: int) -> list[dict]:
        return [hit.to_dict() for hit in self.server.env.search_hits(query, limit)]

    def _search(self, body: dict) -> dict:
        query = _string(body, "query")
        limit = _limit(body, self.server.env.settings.results_per_query)
        start = time.perf_counter()
        results = self._hits(query, limit)
        return {"results": results, "total": len(results), "search_time": time.perf_counter() - start}

    def _batch_search(self, body: dict) -> dict:
        queries = body.get("queries")
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise _BadRequest("'queries' must be a list of strings")
        if len(queries) > MAX_BATCH_QUERIES:
            raise _BadRequest(f"at most {MAX_BATCH_QUERIES} queries per batch, got {len(queries)}")
        limit = _limit(body, self.server.env.settings.results_per_query)
        start = time.perf_counter()
        out = []
        for query in queries:
            results = self._hits(query, limit)
            out.append({"query": query, "results": results, "total": len(results)})
        return {"query_results": out, "total_queries": len(out), "search_time": time.perf_counter() - start}

    def _query(self, body: dict) -> dict:
        url = _string(body, "url").strip()
        goal = body.get("goal") or body.get("question")
        if not isinstance(goal, str) or not goal.strip():
            return {"success": False, "result": "", "from_cache": False,
                    "error": "Missing 'goal' or 'question' parameter"}
        cached = self.server.cache.get((url, goal))
        if cached is not None:
            return {"success": True, "result": cached, "from_cache": True, "error": ""}
        try:
            text = self.server.env.visit_page(url, goal)
        except SummaryError as e:
            return {"success": False, "result": visit_miss(url, goal), "from_cache": False, "error": str(e)}
        if text is None:
            return {"success": False, "result": visit_miss(url, goal), "from_cache": False,
                    "error": "Not found: the URL is not in the page store"}
        self.server.cache.put((url, goal), text)
        return {"success": True, "result": text, "from_cache": False, "error": ""}
