"""The tool texts of docs/protocol.md section 3, byte for byte, and the per-call filtering of search results.

The layout follows the original tool code: each result is `{i}. [{title}]({link})\\n{snippet}`, results are
separated by a blank line, and a query block is stripped at the ends (so a block with no results ends at
`## Web Results`). Query blocks and visited pages are joined by JOIN.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

JOIN = "\n\n=======\n\n"

_VISIT_HEAD = "The useful information in {url} for user goal {goal} as follows: \n\n"
VISIT_MISS_EVIDENCE = "The provided webpage content could not be accessed. Please check the URL or file format."
VISIT_MISS_SUMMARY = "The webpage content could not be processed, and therefore, no information is available."


@dataclass(frozen=True)
class SearchHit:
    link: str
    title: str
    snippet: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchHit":
        return cls(link=str(d.get("link", "")), title=str(d.get("title", "")),
                   snippet=str(d.get("snippet", "")), score=float(d.get("score", 0.0)))


def filter_results(per_query: list[list[SearchHit]], mask_url: str | None) -> list[list[SearchHit]]:
    """Drop results whose link contains mask_url, and links already shown for an earlier query of the call."""
    seen: set[str] = set()
    out = []
    for hits in per_query:
        kept = []
        for hit in hits:
            if not hit.link or (mask_url and mask_url in hit.link) or hit.link in seen:
                continue
            seen.add(hit.link)
            kept.append(hit)
        out.append(kept)
    return out


def format_query_block(query: str, hits: list[SearchHit]) -> str:
    text = f"A Google search for '{query}' found {len(hits)} results:\n\n## Web Results\n"
    for i, hit in enumerate(hits, 1):
        text += f"{i}. [{hit.title}]({hit.link})\n{hit.snippet}\n\n"
    return text.strip()


def format_search(queries: list[str], per_query: list[list[SearchHit]], mask_url: str | None = None) -> str:
    """The search tool's text for one call: filtering, numbering from 1, N after filtering, joined blocks."""
    kept = filter_results(per_query, mask_url)
    return JOIN.join(format_query_block(q, hits) for q, hits in zip(queries, kept))


def format_visit(url: str, goal: str, evidence: str, summary: str) -> str:
    return (_VISIT_HEAD.format(url=url, goal=goal) + "Evidence in page: \n" + evidence.strip()
            + "\n\nSummary: \n" + summary.strip())


def visit_miss(url: str, goal: str) -> str:
    return (_VISIT_HEAD.format(url=url, goal=goal) + "Evidence in page: \n" + VISIT_MISS_EVIDENCE
            + "\n\nSummary: \n" + VISIT_MISS_SUMMARY + "\n\n")


def as_list(value, name: str) -> list[str]:
    """A tool argument that may be one string or a list of strings (docs/protocol.md section 3)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"'{name}' must be a string or a non-empty list of strings, got {value!r:.200}")
