"""The HTTP backend: the environment interface on top of search and browse services (ours or the original ones).

Search texts are formatted here from the services' results (filtering, numbering and snippet length are the
client's, so they follow this backend's settings); a visit text is the browse service's finished result.

A tool call that cannot be served (a service down, slower than the call's deadline, answering an HTTP error or
something that is not the expected JSON) raises EnvError, which the agent turns into the protocol's error text
(`Error when executing tool: ...`) and records as a failed call. Each call has a deadline (`deadline` seconds over
all its tries); retries back off exponentially, capped, and honour a service's Retry-After (within the cap).
The retry helpers here (`backoff_delay`, `read_body`, `loads_reply`) are shared with the judge and the summariser.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import math
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .formats import JOIN, SearchHit, as_list, format_search
from .settings import EnvSettings
from .text import first_words

_ENDPOINTS = ("/batch_search", "/search", "/query", "/health")
# what a try can fail with: refused / reset / timed-out connections and HTTP errors (OSError), replies that are
# not JSON or too large (ValueError), broken HTTP (HTTPException: a bad status line, a truncated body)
TRANSPORT_ERRORS = (OSError, ValueError, http.client.HTTPException)


class EnvError(RuntimeError):
    """A service could not be reached or answered with an error (the agent reports it as a tool error)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ReplyTooLarge(ValueError):
    """A reply longer than the client accepts."""


# --- retry helpers (shared with the judge and the LLM summariser) ----------------------------------------------
def retryable_status(code: int) -> bool:
    """HTTP statuses worth another try: timeouts, conflicts, rate limits and server errors; any other 4xx says the
    request itself is wrong, and would be refused again."""
    return code in (408, 409, 425, 429) or code >= 500


def retry_after(error: BaseException | None) -> float | None:
    """The seconds an HTTP error's Retry-After header asks for (delta-seconds or an HTTP date), or None."""
    headers = getattr(error, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff_delay(attempt: int, base: float, cap: float, error: BaseException | None = None) -> float:
    """Seconds to wait before try `attempt + 1` (attempt 1: the first retry): what the last error's Retry-After
    asks for when it sent one, else base * 2 ** (attempt - 1); never more than `cap`."""
    asked = retry_after(error)
    delay = asked if asked is not None else base * 2 ** (attempt - 1)
    return max(0.0, min(cap, delay))


def read_body(response, limit: int, deadline: float | None = None) -> bytes:
    """A reply's body, at most `limit` bytes (ReplyTooLarge beyond) and finished before `deadline`
    (time.monotonic(); TimeoutError after it), so a service that trickles bytes cannot hold a call forever."""
    chunks, size = [], 0
    read = getattr(response, "read1", response.read)
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"the reply did not arrive in time ({size} bytes so far)")
        chunk = read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ReplyTooLarge(f"the reply is larger than {limit} bytes")
        chunks.append(chunk)


def clean_strings(obj):
    """`obj` with every string made encodable as UTF-8 (lone surrogates, which JSON escapes can carry, become
    U+FFFD), so that what a service said can be written to a trajectory file."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(obj, list):
        return [clean_strings(v) for v in obj]
    if isinstance(obj, dict):
        return {clean_strings(k): clean_strings(v) for k, v in obj.items()}
    return obj


def loads_reply(raw: bytes):
    """A JSON reply (bytes that are not UTF-8 replaced, strings made encodable); ValueError if it is not JSON."""
    try:
        return clean_strings(json.loads(raw.decode("utf-8", "replace")))
    except RecursionError:
        raise ValueError("the reply's JSON is nested too deeply") from None


def service_base(url: str) -> str:
    """The service root of a URL given either as the root or as one of its endpoints."""
    url = url.rstrip("/")
    for endpoint in _ENDPOINTS:
        if url.endswith(endpoint):
            return url[: -len(endpoint)]
    return url


class HttpEnv:
    """settings: the sizes to use as they are; without them the sizes a litere service reports on /health
    (defaults for other services), with `overrides` applied, are fetched on first use.

    timeout: seconds per try (each socket operation; the reply must be complete `timeout` after the try began,
    so a service that trickles bytes cannot hold a call); deadline: seconds one search or visit
    call may take over all its tries (default timeout x (1 + retries)); no retry starts past it. A retry waits
    retry_delay x 2^(attempt-1), or the service's Retry-After, capped at max_retry_delay."""

    def __init__(self, search_url: str | None, browse_url: str | None, settings: EnvSettings | None = None, *,
                 overrides: dict | None = None, timeout: float = 30.0, retries: int = 2, retry_delay: float = 0.5,
                 max_retry_delay: float = 10.0, deadline: float | None = None, max_reply_bytes: int = 64 << 20,
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
        self.max_retry_delay = max_retry_delay
        self.deadline = deadline if deadline is not None else timeout * (1 + retries)
        self.max_reply_bytes = max_reply_bytes
        self.search_type = search_type
        self._batch_supported = True

    def _settings_for(self, deadline: float) -> EnvSettings:
        with self._settings_lock:
            if self._settings is None:
                reported = self.health(deadline).get("env_settings")
                if reported is not None and not isinstance(reported, dict):
                    raise EnvError(f"{self._health_url()} reported env_settings that are not an object")
                try:
                    self._settings = EnvSettings.from_dict(reported).updated(**self._overrides)
                except (TypeError, ValueError) as e:
                    raise EnvError(f"{self._health_url()} reported unusable env_settings: {e}") from None
            return self._settings

    @property
    def settings(self) -> EnvSettings:
        return self._settings_for(time.monotonic() + self.deadline)

    def _post(self, url: str, payload: dict, deadline: float) -> dict:
        data = json.dumps(payload, ensure_ascii=False).encode()
        last: BaseException | None = None
        tries = 0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = backoff_delay(attempt, self.retry_delay, self.max_retry_delay, last)
                if time.monotonic() + delay >= deadline:
                    break
                time.sleep(delay)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tries += 1
            request = urllib.request.Request(url, data=data, method="POST",
                                             headers={"Content-Type": "application/json"})
            try_ends = min(deadline, time.monotonic() + self.timeout)
            try:
                with urllib.request.urlopen(request, timeout=min(self.timeout, left)) as response:
                    reply = loads_reply(read_body(response, self.max_reply_bytes, try_ends))
                if not isinstance(reply, dict):
                    raise ValueError(f"the reply is not a JSON object: {str(reply)[:200]!r}")
                return reply
            except urllib.error.HTTPError as e:
                if not retryable_status(e.code):   # the request itself is wrong: retrying will not help
                    raise EnvError(f"{url} answered {e.code}: {_error_body(e)}", status=e.code) from None
                last = e
            except TRANSPORT_ERRORS as e:   # refused/reset, timeout, a reply that is not JSON or too large
                last = e
        raise EnvError(f"{url} failed after {tries} {'attempt' if tries == 1 else 'attempts'}: "
                       f"{type(last).__name__}: {last}" if last else f"{url}: no time left for a try")

    def _health_url(self) -> str:
        return (self.search_base or self.browse_base) + "/health"

    def health(self, deadline: float | None = None) -> dict:
        url = self._health_url()
        timeout = self.timeout if deadline is None else max(0.001, min(self.timeout, deadline - time.monotonic()))
        try_ends = time.monotonic() + timeout
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                reply = loads_reply(read_body(response, self.max_reply_bytes, try_ends))
        except TRANSPORT_ERRORS as e:
            raise EnvError(f"{url} failed: {type(e).__name__}: {e}") from None
        if not isinstance(reply, dict):
            raise EnvError(f"{url} answered with something that is not a JSON object")
        return reply

    def _results(self, queries: list[str], deadline: float) -> list[list[SearchHit]]:
        if self.search_base is None:
            raise EnvError("no search service configured")
        payload = {"limit": self._settings_for(deadline).results_per_query, "search_type": self.search_type}
        if self._batch_supported:
            url = self.search_base + "/batch_search"
            try:
                reply = self._post(url, {"queries": queries, **payload}, deadline)
            except EnvError as e:
                if e.status != 404:
                    raise
                self._batch_supported = False   # a service with /search only
            else:
                per_query = reply.get("query_results")
                if not isinstance(per_query, list) or len(per_query) != len(queries):
                    raise EnvError(f"{url} answered without one query_results entry per query")
                return [_hits(url, q.get("results") if isinstance(q, dict) else None) for q in per_query]
        url = self.search_base + "/search"
        return [_hits(url, self._post(url, {"query": q, **payload}, deadline).get("results")) for q in queries]

    def search(self, queries: list[str] | str, mask_url: str | None = None) -> str:
        deadline = time.monotonic() + self.deadline
        queries = as_list(queries, "query")
        hits_per_query = self._results(queries, deadline)
        settings = self._settings_for(deadline)
        per_query = [[SearchHit(hit.link, " ".join(hit.title.split()), first_words(hit.snippet, settings.snippet_words),
                                hit.score)
                      for hit in hits[: settings.results_per_query]]
                     for hits in hits_per_query]
        return format_search(queries, per_query, mask_url)

    def _visit_one(self, url: str, goal: str, deadline: float) -> str:
        reply = self._post(self.browse_base + "/query", {"url": url, "goal": goal, "question": goal}, deadline)
        if reply.get("result"):
            return str(reply["result"])
        if reply.get("error"):
            return f"Browse error: {reply['error']}"
        return "No relevant information found for the provided link."

    def visit(self, urls: list[str] | str, goal: str) -> str:
        deadline = time.monotonic() + self.deadline
        if self.browse_base is None:
            raise EnvError("no browse service configured")
        urls = [u.strip() for u in as_list(urls, "url")]
        if not isinstance(goal, str) or not goal.strip():
            raise ValueError(f"'goal' must be a non-empty string, got {goal!r:.200}")
        if len(urls) == 1:
            return self._visit_one(urls[0], goal, deadline)
        with ThreadPoolExecutor(max_workers=min(len(urls), 8)) as pool:
            return JOIN.join(pool.map(lambda u: self._visit_one(u, goal, deadline), urls))

    def close(self) -> None:
        pass


def _error_body(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(300).decode(errors="replace")
    except TRANSPORT_ERRORS:
        return ""


def _hits(url: str, results) -> list[SearchHit]:
    """A query's hits from a service's `results` list; EnvError when the reply does not have that layout."""
    if not isinstance(results, list):
        raise EnvError(f"{url} answered without a results list")
    try:
        return [SearchHit.from_dict(r) for r in results if isinstance(r, dict)]
    except (TypeError, ValueError) as e:
        raise EnvError(f"{url} answered a result that is not a search hit: {e}") from None
