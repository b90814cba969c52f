"""Word-level text helpers shared by the search index and the summarisers."""
from __future__ import annotations

import re
import unicodedata

# Letters and digits, as SQLite's unicode61 tokenizer sees them (underscore and punctuation separate tokens).
_TERM = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")

# Words that say nothing about which sentence answers a goal ("find" opens most visit goals).
STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be been before being below between both but by can
could did do does doing down during each few find for from further had has have having he her here hers him his
how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over
own same she should so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your
""".split())


def fold(text: str) -> str:
    """Lower case without diacritics (the unicode61 tokenizer's `remove_diacritics 2` folding)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def terms(text: str) -> list[str]:
    """Index terms of a text in order (duplicates kept)."""
    return _TERM.findall(fold(text))


def first_words(text: str, n: int, *, truncated: bool = False) -> str:
    """The first n whitespace-separated words, with "..." when the text goes on mid-sentence.

    `truncated` says the text given is itself a cut prefix, so its last word may be partial and more follows.
    """
    words = text.split()
    if truncated and words:
        words.pop()
    if len(words) <= n and not truncated:
        return " ".join(words)
    cut = " ".join(words[:n])
    return cut if cut.endswith((".", "!", "?")) or not cut else cut.rstrip(",;:") + "..."


def sentences(text: str) -> list[str]:
    """Split a page into sentences: line breaks first, then sentence punctuation followed by a capital or digit."""
    out = []
    for line in text.splitlines():
        for piece in _SENTENCE_END.split(line.strip()):
            piece = piece.strip()
            if piece:
                out.append(piece)
    return out


def one_line(text: str) -> str:
    """Collapse all whitespace runs (titles must not break the one-result-per-line layout)."""
    return " ".join(text.split())
