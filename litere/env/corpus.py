"""Streaming, resumable corpus ingest into a PageStore.

Accepted records (JSON lines, plain or gzip, detected from the file's first bytes):
  {"url", "title", "doc"}                       the LiteResearcher corpus form
  {"id", "text", "metadata": {"title", "url"}}  the form of many retrieval corpora
A line that is not such a record is counted and reported with its line number; it never stops the ingest.
Each batch commits together with the number of lines done, so an interrupted ingest resumes after the last
committed batch (the source is recognised by its path, size and modification time). URLs already stored are
skipped: the first page seen for a URL wins.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable

from .store import PageStore

MAX_REPORTED_BAD_LINES = 1000
_WARNED_BAD_LINES = 20


@dataclass
class IngestReport:
    lines: int = 0          # lines read in this run (resumed lines excluded)
    resumed: int = 0        # lines skipped because an earlier run committed them
    added: int = 0
    duplicates: int = 0
    bad: int = 0
    bad_lines: list[tuple[str, int, str]] = field(default_factory=list)   # (source, line number, reason)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.lines / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.lines:,} lines ({self.resumed:,} resumed), {self.added:,} pages added, "
                f"{self.duplicates:,} duplicate URLs, {self.bad:,} bad lines, {self.seconds:.1f}s "
                f"({rate:,.0f} lines/s)")


def parse_record(obj) -> tuple[str, str, str]:
    """(url, title, text) of one corpus record; ValueError saying what is missing otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    url = obj.get("url", meta.get("url"))
    title = obj.get("title", meta.get("title", ""))
    text = obj["doc"] if "doc" in obj else obj.get("text")
    if not isinstance(url, str) or not url.strip():
        raise ValueError("no url (expected 'url' or 'metadata.url')")
    if not isinstance(text, str):
        raise ValueError("no text (expected 'doc' or 'text')")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise ValueError("title is not a string")
    return url.strip(), title, text


class _Progress:
    """A one-line progress report on stderr, redrawn at most every half second."""

    def __init__(self, name: str, size: int, enabled: bool):
        self.name, self.size, self.enabled = name, size, enabled
        self.start = self.last = time.monotonic()
        self.drawn = False

    def show(self, position: int, lines: int, added: int, bad: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.5):
            return
        self.last = now
        pct = 100.0 * position / self.size if self.size else 100.0
        rate = lines / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r{self.name}: {pct:5.1f}%  {lines:,} lines  {added:,} added  {bad:,} bad  "
                         f"{rate:,.0f} lines/s" + ("\n" if final else ""))
        sys.stderr.flush()
        self.drawn = not final

    def note(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write(("\n" if self.drawn else "") + message + "\n")
            self.drawn = False


def _open_lines(raw: IO[bytes]) -> IO[bytes]:
    magic = raw.read(2)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw


def _bad_line(report: IngestReport, bar: _Progress, source: str, lineno: int, reason: str) -> None:
    report.bad += 1
    if len(report.bad_lines) < MAX_REPORTED_BAD_LINES:
        report.bad_lines.append((source, lineno, reason))
    if report.bad <= _WARNED_BAD_LINES:
        bar.note(f"{source}:{lineno}: skipped bad line: {reason}")


def ingest(store: PageStore | str | os.PathLike, sources: Iterable[str | os.PathLike], *,
           batch_size: int = 2000, progress: bool = True) -> IngestReport:
    """Ingest corpus files into a store (a PageStore or the path of its database file)."""
    own_store = not isinstance(store, PageStore)
    if own_store:
        store = PageStore(store)
    report = IngestReport()
    start = time.monotonic()
    try:
        with store.bulk_writes():
            for source in sources:
                _ingest_file(store, Path(source), batch_size, progress, report)
            store.refresh_terms()
    finally:
        report.seconds = time.monotonic() - start
        if own_store:
            store.close()
    if progress and report.bad > _WARNED_BAD_LINES:
        sys.stderr.write(f"... {report.bad - _WARNED_BAD_LINES:,} more bad lines not shown\n")
    return report


def _ingest_file(store: PageStore, path: Path, batch_size: int, progress: bool, report: IngestReport) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    key = str(path.resolve())
    stat = path.stat()
    with store.connection() as conn:
        row = conn.execute("SELECT size, mtime_ns, lines, done FROM ingest_progress WHERE source = ?",
                           (key,)).fetchone()
    skip = 0
    if row is not None and (row[0], row[1]) == (stat.st_size, stat.st_mtime_ns):
        if row[3]:
            report.resumed += row[2]
            return
        skip = row[2]
    bar = _Progress(path.name, stat.st_size, progress)
    batch: list[tuple[str, str, str]] = []
    lineno = 0
    added_here = bad_here = 0

    def commit(done: bool) -> None:
        nonlocal added_here
        with store.transaction() as conn:
            added = store.insert_pages(conn, batch)
            conn.execute("INSERT OR REPLACE INTO ingest_progress(source, size, mtime_ns, lines, done) "
                         "VALUES (?, ?, ?, ?, ?)", (key, stat.st_size, stat.st_mtime_ns, lineno, int(done)))
        report.added += added
        report.duplicates += len(batch) - added
        added_here += added
        batch.clear()

    with open(path, "rb") as raw:
        stream = _open_lines(raw)
        try:
            for line in stream:
                lineno += 1
                if lineno <= skip:
                    report.resumed += 1
                    continue
                report.lines += 1
                if not line.strip():
                    continue
                try:
                    batch.append(parse_record(json.loads(line)))
                except ValueError as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
                    bad_here += 1
                    _bad_line(report, bar, str(path), lineno, str(e))
                if len(batch) >= batch_size:
                    commit(done=False)
                    bar.show(raw.tell(), lineno - skip, added_here, bad_here)
        except (OSError, EOFError) as e:   # a truncated or corrupt gzip stream: keep what was read
            _bad_line(report, bar, str(path), lineno + 1, f"unreadable from here on: {e}")
        commit(done=True)
    bar.show(stat.st_size, lineno - skip, added_here, bad_here, final=True)
