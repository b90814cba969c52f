"""The environment as an HTTP service, with the request and response shapes of the original services.

  POST /search        {query, limit, search_type}  -> {results: [{link, title, snippet, score}], total, search_time}
  POST /batch_search  {queries, limit}             -> {query_results: [{query, results, total}], total_queries,
                                                       search_time}
  POST /query         {url, goal | question}       -> {success, result, from_cache, error}
  GET  /health                                     -> {status, pages, env_settings}
`search_type` is accepted and ignored (there is one index). /query's result is the finished visit text; for a
URL the store lacks, or a page the summariser failed on, it is the miss text with success false, as the original
browse service answers.
"""
from __future__ import annotations

import json
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


class _BadRequest(Exception):
    pass


class _VisitCache:
    """Finished visit texts by (url, goal), least recently used dropped first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: str) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class EnvServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, env: LocalEnv, address: tuple[str, int], *, cache_size: int = 4096, verbose: bool = False):
        super().__init__(address, _Handler)
        self.env = env
        self.pages = env.store.count()
        self.cache = _VisitCache(cache_size)
        self.verbose = verbose

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EnvServer

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if urlsplit(self.path).path == "/health":
            self._reply(200, {"status": "ok", "pages": self.server.pages,
                              "env_settings": self.server.env.settings.to_dict()})
        else:
            self._reply(404, {"error": f"no such endpoint: GET {self.path}"})

    def do_POST(self):
        routes = {"/search": self._search, "/batch_search": self._batch_search, "/query": self._query}
        route = routes.get(urlsplit(self.path).path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._reply(413, {"error": f"request body over {MAX_BODY_BYTES} bytes"})
                return
            raw = self.rfile.read(length)
            if route is None:
                self._reply(404, {"error": f"no such endpoint: POST {self.path}"})
                return
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise _BadRequest("the request body must be a JSON object")
            self._reply(200, route(body))
        except (_BadRequest, ValueError) as e:
            self._reply(400, {"error": str(e)})
        except Exception as e:   # keep serving; the client sees the cause
            self._reply(500, {"error": f"{type(e).__name__}: {e}"})

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
