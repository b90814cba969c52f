"""The local world's environment: a page store with full-text search, visit with goal-conditioned summaries,
an HTTP service and an HTTP backend, all producing the tool texts of docs/protocol.md section 3.

    env = open_env("world.db")                        # embedded: SQLite + FTS5 in this process
    env = open_env("http://host:8000")                # our service (python -m litere.env serve)
    env = open_env("search=http://a:8018/search,browse=http://b:8000/query")   # separate services
    env.search(["query one", "query two"], mask_url=None) -> str
    env.visit(["url"], goal="what to look for") -> str
"""
from __future__ import annotations

import os

from .client import EnvError, HttpEnv
from .corpus import IngestReport, ingest
from .formats import JOIN, SearchHit, format_search, format_visit, visit_miss
from .local import LocalEnv
from .service import make_server
from .settings import EnvSettings
from .store import Page, PageStore
from .summarize import ExtractiveSummarizer, LLMSummarizer, SummaryError, truncate_page

__all__ = ["open_env", "EnvSettings", "LocalEnv", "HttpEnv", "EnvError", "PageStore", "Page", "SearchHit",
           "ingest", "IngestReport", "make_server", "ExtractiveSummarizer", "LLMSummarizer", "SummaryError",
           "truncate_page", "format_search", "format_visit", "visit_miss", "JOIN", "SETTINGS_META_KEY"]

# A store built for particular output sizes (the bundled worlds) records them under this key; open_env uses
# them unless told otherwise, so evaluation sees the tool outputs the model was trained on.
SETTINGS_META_KEY = "env_settings"


def _http_spec(spec: str) -> tuple[str | None, str | None] | None:
    if spec.startswith(("http://", "https://")):
        return spec, spec
    if "search=" in spec or "browse=" in spec:
        pieces = [part.split("=", 1) for part in spec.split(",")]
        parts = {p[0].strip(): p[1].strip() for p in pieces if len(p) == 2}
        if len(parts) != len(pieces) or not set(parts) <= {"search", "browse"}:
            raise ValueError(f"env spec {spec!r}: expected search=URL,browse=URL (either may be left out)")
        return parts.get("search"), parts.get("browse")
    return None


def open_env(spec: str | os.PathLike, *, tokenizer=None, summarizer=None, timeout: float = 30.0, retries: int = 2,
             deadline: float | None = None, max_retry_delay: float = 10.0, **settings) -> LocalEnv | HttpEnv:
    """The environment named by spec: a page store file (embedded) or service URL(s) (HTTP backend).

    settings: EnvSettings fields (results_per_query, snippet_words, visit_sentences, ...), overriding the sizes
    a store records (or a litere service reports). For services they size the search texts only: visit texts
    come finished from the service.
    tokenizer: optional object with encode/decode, to cut pages by tokens before summarising (embedded only).
    timeout, retries, deadline (seconds per tool call, all tries), max_retry_delay: the HTTP backend's (HttpEnv).
    """
    urls = _http_spec(str(spec))
    if urls is not None:
        return HttpEnv(*urls, overrides=settings, timeout=timeout, retries=retries, deadline=deadline,
                       max_retry_delay=max_retry_delay)
    store = PageStore(spec, readonly=True)
    try:
        chosen = EnvSettings.from_dict(store.get_meta(SETTINGS_META_KEY)).updated(**settings)
    except BaseException:
        store.close()
        raise
    return LocalEnv(store, chosen, summarizer=summarizer, tokenizer=tokenizer)
