"""The embedded backend: search and visit answered from a PageStore in this process."""
from __future__ import annotations

from .formats import JOIN, SearchHit, as_list, format_search, format_visit, visit_miss
from .settings import EnvSettings
from .store import PageStore
from .summarize import ExtractiveSummarizer, Summarizer, SummaryError, truncate_page


class LocalEnv:
    """search(queries, mask_url) and visit(urls, goal) with the texts of docs/protocol.md section 3. Thread-safe."""

    def __init__(self, store: PageStore, settings: EnvSettings | None = None, *,
                 summarizer: Summarizer | None = None, tokenizer=None):
        self.store = store
        self.settings = settings or EnvSettings()
        self.summarizer = summarizer or ExtractiveSummarizer.from_settings(self.settings)
        self.tokenizer = tokenizer

    def search_hits(self, query: str, limit: int | None = None) -> list[SearchHit]:
        """Ranked results of one query before the per-call filtering (what the search service returns)."""
        limit = self.settings.results_per_query if limit is None else limit
        return self.store.search(query, limit=limit, snippet_words=self.settings.snippet_words)

    def search(self, queries: list[str] | str, mask_url: str | None = None) -> str:
        queries = as_list(queries, "query")
        return format_search(queries, [self.search_hits(q) for q in queries], mask_url)

    def visit_page(self, url: str, goal: str) -> str | None:
        """The visit text of one URL, or None when the store does not have it; SummaryError when the summariser
        fails on it."""
        page = self.store.get(url)
        if page is None:
            return None
        text = truncate_page(page.text, tokenizer=self.tokenizer, max_tokens=self.settings.page_tokens,
                             max_words=self.settings.page_words)
        evidence, summary = self.summarizer.summarize(text, goal)
        return format_visit(url, goal, evidence, summary)

    def visit(self, urls: list[str] | str, goal: str) -> str:
        urls = [u.strip() for u in as_list(urls, "url")]
        if not isinstance(goal, str) or not goal.strip():
            raise ValueError(f"'goal' must be a non-empty string, got {goal!r:.200}")
        texts = []
        for url in urls:
            try:
                text = self.visit_page(url, goal)
            except SummaryError:
                text = None
            texts.append(visit_miss(url, goal) if text is None else text)
        return JOIN.join(texts)

    def close(self) -> None:
        self.store.close()
