"""Sizes of the tool outputs. The formats (docs/protocol.md section 3) never change; these only change how much
goes in them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class EnvSettings:
    results_per_query: int = 10     # docs/protocol.md section 3: 10 per query
    snippet_words: int = 25         # the original cut a random 20-30 words; ours is fixed
    visit_sentences: int = 5        # evidence: the best sentences for the goal, in page order
    summary_sentences: int = 2      # summary: the best sentences, best first
    visit_max_chars: int = 3000     # bound on the evidence text
    page_tokens: int = 32768        # a page is cut to this many tokens before summarising (with a tokenizer)
    page_words: int = 24000         # ... or to this many words (without one)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"env setting {f.name} must be a positive integer, got {value!r}")

    @classmethod
    def compact(cls) -> "EnvSettings":
        """Small outputs for tiny models (bundled world demo): 3 results, 10-word snippets, 2-sentence visits."""
        return cls(results_per_query=3, snippet_words=10, visit_sentences=2, summary_sentences=1,
                   visit_max_chars=600)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "EnvSettings":
        return cls().updated(**(d or {}))

    def updated(self, **changes) -> "EnvSettings":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown env setting(s) {unknown}; known: {sorted(known)}")
        return replace(self, **changes)
