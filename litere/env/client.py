"""The HTTP backend: the environment interface on top of search and browse services (ours or the original ones).

Search texts are formatted here from the services' results (filtering, numbering and snippet length are the
client's, so they follow this backend's settings); a visit text is the browse service's finished result.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .formats import JOIN, SearchHit, as_list, format_search
from .settings import EnvSettings
from .text import first_words

_ENDPOINTS = ("/batch_search", "/search", "/query", "/health")


class EnvError(RuntimeError):
    """A service could not be reached or answered with an error (the agent reports it as a tool error)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def service_base(url: str) -> str:
    """The service root of a URL given either as the root or as one of its endpoints."""
    url = url.rstrip("/")
    for endpoint in _ENDPOINTS:
        if url.endswith(endpoint):
            return url[: -len(endpoint)]
    return url


class HttpEnv:
    """settings: the sizes to use as they are; without them the sizes a litere service reports on /health
    (defaults for other services), with `overrides` applied, are fetched on first use."""

    def __init__(self, search_url: str | None, browse_url: str | None, settings: EnvSettings | None = None, *,
                 overrides: dict | None = None, timeout: float = 30.0, retries: int = 2, retry_delay: float = 0.5,
                 search_type: str = "hybrid"):
        self.search_base = service_base(search_url) if search_url else None
        self.browse_base = service_base(browse_url) if browse_url else None
        self._settings = settings
        self._overrides = dict(overrides or {})
        EnvSettings().updated(**self._overrides)   # reject unknown names now, not at the first call
        self._settings_lock = threading.Lock()
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.search_type = search_type
        self._batch_supported = True

    @property
    def settings(self) -> EnvSettings:
        with self._settings_lock:
            if self._settings is None:
                reported = self.health().get("env_settings")
                self._settings = EnvSettings.from_dict(reported).updated(**self._overrides)
            return self._settings

    def _post(self, url: str, payload: dict) -> dict:
        data = json.dumps(payload, ensure_ascii=False).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                if e.code < 500:    # the request itself is wrong: retrying will not help
                    raise EnvError(f"{url} answered {e.code}: {e.read()[:300].decode(errors='replace')}",
                                   status=e.code) from None
                last = e
            except (OSError, ValueError) as e:   # connection refused/reset, timeout, a reply that is not JSON
                last = e
            if attempt < self.retries:
                time.sleep(self.retry_delay * (attempt + 1))
        raise EnvError(f"{url} failed after {self.retries + 1} attempts: {last}")

    def health(self) -> dict:
        url = (self.search_base or self.browse_base) + "/health"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return json.loads(response.read())
        except (OSError, ValueError) as e:
            raise EnvError(f"{url} failed: {e}") from None

    def _results(self, queries: list[str]) -> list[list[SearchHit]]:
        if self.search_base is None:
            raise EnvError("no search service configured")
        payload = {"limit": self.settings.results_per_query, "search_type": self.search_type}
        if self._batch_supported:
            try:
                reply = self._post(self.search_base + "/batch_search", {"queries": queries, **payload})
                return [[SearchHit.from_dict(r) for r in q.get("results", [])] for q in reply["query_results"]]
            except EnvError as e:
                if e.status != 404:
                    raise
                self._batch_supported = False   # a service with /search only
        return [[SearchHit.from_dict(r) for r in self._post(self.search_base + "/search",
                                                            {"query": q, **payload}).get("results", [])]
                for q in queries]

    def search(self, queries: list[str] | str, mask_url: str | None = None) -> str:
        queries = as_list(queries, "query")
        per_query = [[SearchHit(hit.link, " ".join(hit.title.split()),
                                first_words(hit.snippet, self.settings.snippet_words), hit.score)
                      for hit in hits[: self.settings.results_per_query]]
                     for hits in self._results(queries)]
        return format_search(queries, per_query, mask_url)

    def _visit_one(self, url: str, goal: str) -> str:
        reply = self._post(self.browse_base + "/query", {"url": url, "goal": goal, "question": goal})
        if reply.get("result"):
            return str(reply["result"])
        if reply.get("error"):
            return f"Browse error: {reply['error']}"
        return "No relevant information found for the provided link."

    def visit(self, urls: list[str] | str, goal: str) -> str:
        if self.browse_base is None:
            raise EnvError("no browse service configured")
        urls = [u.strip() for u in as_list(urls, "url")]
        if not isinstance(goal, str) or not goal.strip():
            raise ValueError(f"'goal' must be a non-empty string, got {goal!r:.200}")
        if len(urls) == 1:
            return self._visit_one(urls[0], goal)
        with ThreadPoolExecutor(max_workers=min(len(urls), 8)) as pool:
            return JOIN.join(pool.map(lambda u: self._visit_one(u, goal), urls))

    def close(self) -> None:
        pass
