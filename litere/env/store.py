"""The embedded page store: SQLite (standard library), pages keyed by URL, FTS5 BM25 over title and text.

Search latency is bounded by the number of postings scored, not by the corpus: query terms are taken rarest
first while their document counts add up to at most `max_candidates` (the rarest term is always kept), and
at most `max_candidates` matching documents are scored. Terms left out are the most common ones, whose BM25
weight is small anyway; on corpora where no query reaches the bound (the bundled worlds) ranking is exact BM25.
Document counts come from the `terms` table, rebuilt after each ingest (looking terms up in FTS5's own
vocabulary table costs about as much as the search itself).
"""
from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .formats import SearchHit
from .text import first_words, one_line, terms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages(id INTEGER PRIMARY KEY, url TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
                                 text TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS pages_fts USING fts5(title, text, content='pages', content_rowid='id',
                                                        tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS pages_into_fts AFTER INSERT ON pages BEGIN
    INSERT INTO pages_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
CREATE TABLE IF NOT EXISTS terms(term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_progress(source TEXT PRIMARY KEY, size INTEGER NOT NULL,
                                           mtime_ns INTEGER NOT NULL, lines INTEGER NOT NULL,
                                           done INTEGER NOT NULL);
"""

_SEARCH = """
SELECT p.url, p.title, substr(p.text, 1, ?), -c.score FROM (
    SELECT rowid, score FROM (
        SELECT rowid, bm25(pages_fts, ?, 1.0) AS score FROM pages_fts WHERE pages_fts MATCH ? LIMIT ?
    ) ORDER BY score, rowid LIMIT ?
) AS c JOIN pages AS p ON p.id = c.rowid ORDER BY c.score, c.rowid
"""

MAX_QUERY_TERMS = 32


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    text: str


class PageStore:
    """Pages and their full-text index in one SQLite file (or in memory with path ":memory:").

    Safe to share between threads: a file store lends each caller an idle connection from its pool, which grows
    to at most `max_connections` (default 4 per CPU, at most 32; callers beyond it wait for one to come back), so
    its memory and mapped pages stay bounded however many threads call at once; an in-memory store has one
    connection behind a lock.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, max_candidates: int = 10_000,
                 title_weight: float = 2.0, max_connections: int | None = None):
        self.path = str(path)
        self.max_connections = min(32, 4 * (os.cpu_count() or 1)) if max_connections is None else max_connections
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.readonly = readonly
        self.max_candidates = max_candidates
        self.title_weight = title_weight
        self._memory = self.path == ":memory:"
        if not self._memory:
            if readonly and not Path(self.path).is_file():
                raise FileNotFoundError(f"page store {self.path} does not exist")
            if not readonly:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._memory_conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None) \
            if self._memory else None
        self._closed = False
        with self.connection() as conn:
            if not readonly:
                conn.executescript(_SCHEMA)
            elif conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pages'").fetchone() is None:
                self._closed = True
                raise ValueError(f"{self.path} is not a litere page store (it has no pages table)")

    # -- connections ---------------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + ("?mode=ro" if self.readonly else "")
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA cache_size = -16384")
        conn.execute("PRAGMA mmap_size = 268435456")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for the caller alone until the block ends."""
        if self._closed:
            raise RuntimeError(f"page store {self.path} is closed")
        if self._memory:
            with self._lock:
                yield self._memory_conn
            return
        with self._slots:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._open()
            try:
                yield conn
            finally:
                if self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (commit on success, roll back on error)."""
        if self.readonly:
            raise PermissionError(f"page store {self.path} was opened read-only")
        with self.connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        """Write-ahead logging while many batches go in; a single self-contained file again afterwards."""
        if self._memory:
            yield
            return
        with self.connection() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        try:
            yield
        finally:
            with self.connection() as conn:
                conn.execute("PRAGMA journal_mode = DELETE")

    def save_as(self, path: str | os.PathLike) -> None:
        """Copy the whole store into a new database file (replacing one that exists)."""
        target = Path(path)
        target.unlink(missing_ok=True)
        copy = sqlite3.connect(target)
        try:
            with self.connection() as conn:
                conn.backup(copy)
        finally:
            copy.close()

    def close(self) -> None:
        """Close idle connections now; connections in use close when their callers finish."""
        self._closed = True
        if self._memory_conn is not None:
            with self._lock:
                self._memory_conn.close()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break

    def __enter__(self) -> "PageStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------------
    @staticmethod
    def insert_pages(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, str]]) -> int:
        """Insert (url, title, text) rows inside a transaction; the first page seen for a URL wins.

        Returns the number of new pages."""
        cur = conn.executemany("INSERT OR IGNORE INTO pages(url, title, text) VALUES (?, ?, ?)", rows)
        return cur.rowcount

    def add_pages(self, rows: Iterable[tuple[str, str, str]]) -> int:
        """Insert pages in one transaction and refresh the term statistics. Returns the number of new pages."""
        with self.transaction() as conn:
            added = self.insert_pages(conn, rows)
        self.refresh_terms()
        return added

    def refresh_terms(self) -> None:
        """Rebuild the document count of every indexed term (one pass over the FTS5 vocabulary)."""
        with self.transaction() as conn:
            conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.pages_vocab USING fts5vocab(main, pages_fts, row)")
            conn.execute("DELETE FROM terms")
            conn.execute("INSERT INTO terms(term, df) SELECT term, doc FROM temp.pages_vocab")

    def set_meta(self, key: str, value) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- reading -------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        with self.connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def count(self) -> int:
        with self.connection() as conn:
            return conn.execute("SELECT count(*) FROM pages").fetchone()[0]

    def get(self, url: str) -> Page | None:
        """The page stored under exactly this URL, or None."""
        if not url.isascii():
            try:
                url.encode("utf-8")
            except UnicodeEncodeError:   # a lone surrogate: no stored URL holds one (and SQLite cannot take it)
                return None
        with self.connection() as conn:
            row = conn.execute("SELECT url, title, text FROM pages WHERE url = ?", (url,)).fetchone()
        return None if row is None else Page(*row)

    def search(self, query: str, limit: int = 10, snippet_words: int = 25) -> list[SearchHit]:
        """The best `limit` pages for a free-text query (BM25, title weighted). Any string is a valid query."""
        if limit < 1:
            return []
        with self.connection() as conn:
            match = self._match_expression(conn, query)
            if match is None:
                return []
            prefix_chars = 64 * snippet_words + 256
            try:
                rows = conn.execute(_SEARCH, (prefix_chars, self.title_weight, match, self.max_candidates,
                                              limit)).fetchall()
            except sqlite3.OperationalError as e:
                if "fts5" in str(e):   # a term FTS5 tokenizes to nothing: nothing to find
                    return []
                raise
        return [SearchHit(link=url, title=one_line(title),
                          snippet=first_words(prefix, snippet_words, truncated=len(prefix) == prefix_chars),
                          score=score)
                for url, title, prefix, score in rows]

    def _match_expression(self, conn: sqlite3.Connection, query: str) -> str | None:
        """An FTS5 expression ORing quoted index terms, rarest first within the posting budget."""
        unique = list(dict.fromkeys(terms(query)))[:MAX_QUERY_TERMS]
        if not unique:
            return None
        marks = ",".join("?" * len(unique))
        df = dict(conn.execute(f"SELECT term, df FROM terms WHERE term IN ({marks})", unique).fetchall())
        chosen, postings = [], 0
        for term in sorted(unique, key=lambda t: df.get(t, 0)):
            if chosen and postings + df.get(term, 0) > self.max_candidates:
                break
            chosen.append(term)
            postings += df.get(term, 0)
        # Terms hold letters and digits only, so quoting makes every FTS5 operator and keyword a literal.
        return " OR ".join(f'"{t}"' for t in chosen)
