"""Goal-conditioned page summaries for the visit tool: an extractive default and an LLM summariser.

A summariser maps (page text, goal) to (evidence, summary), the two parts of the visit text, or raises
SummaryError; the visit text of that page is then the protocol's miss text (docs/protocol.md section 3).
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Protocol

from .client import TRANSPORT_ERRORS, backoff_delay, clean_strings, loads_reply, read_body, retryable_status
from .settings import EnvSettings
from .text import STOPWORDS, sentences, terms

log = logging.getLogger(__name__)

_WORD = re.compile(r"\S+")
EMPTY_PAGE = ("The page has no text.", "The page contains no information.")


class SummaryError(RuntimeError):
    """A page could not be summarised."""


class Summarizer(Protocol):
    def summarize(self, text: str, goal: str) -> tuple[str, str]: ...


def truncate_page(text: str, *, tokenizer=None, max_tokens: int = 32768, max_words: int = 24000) -> str:
    """Cut a page to a token budget with a tokenizer (`encode`/`decode`), or to a word budget without one."""
    if tokenizer is None:
        for count, word in enumerate(_WORD.finditer(text), 1):
            if count == max_words:
                return text[: word.end()]
        return text
    # Spares encoding a huge page in full: tokens average 3-5 characters, so 16 per token leaves a wide margin.
    head = text[: max_tokens * 16]
    ids = tokenizer.encode(head)
    if len(ids) <= max_tokens and len(head) == len(text):
        return text
    return tokenizer.decode(ids[:max_tokens])


def _bounded(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3].rstrip() + "..."


class ExtractiveSummarizer:
    """Deterministic: the page sentences that share the most goal words, weighted by their rarity in the page.

    Evidence is the best `evidence_sentences` in page order, summary the best `summary_sentences` best first;
    each part holds at most `max_chars` characters. A page without any goal word yields its lead sentences.
    """

    def __init__(self, evidence_sentences: int = 5, summary_sentences: int = 2, max_chars: int = 3000):
        self.evidence_sentences = evidence_sentences
        self.summary_sentences = summary_sentences
        self.max_chars = max_chars

    @classmethod
    def from_settings(cls, settings: EnvSettings) -> "ExtractiveSummarizer":
        return cls(settings.visit_sentences, settings.summary_sentences, settings.visit_max_chars)

    def ranking(self, text: str, goal: str) -> tuple[list[str], list[int]]:
        """The page's sentences, and their indices best for the goal first (ties keep page order)."""
        sents = sentences(text)
        goal_terms = {t for t in terms(goal) if t not in STOPWORDS}
        sent_terms = [set(terms(s)) & goal_terms for s in sents]
        df = Counter(t for st in sent_terms for t in st)
        weight = {t: math.log(1.0 + len(sents) / n) for t, n in df.items()}
        scores = [sum(weight[t] for t in st) for st in sent_terms]
        return sents, sorted(range(len(sents)), key=lambda i: (-scores[i], i))

    def summarize(self, text: str, goal: str) -> tuple[str, str]:
        sents, order = self.ranking(text, goal)
        if not sents:
            return EMPTY_PAGE
        picked, used = [], 0
        for i in order[: self.evidence_sentences]:
            if picked and used + len(sents[i]) > self.max_chars:
                break
            picked.append(i)
            used += len(sents[i])
        evidence = "\n".join(_bounded(sents[i], self.max_chars) for i in sorted(picked))
        summary = _bounded(" ".join(sents[i] for i in order[: self.summary_sentences]), self.max_chars)
        return evidence, summary


_PROMPT = """You read one web page for a research assistant and report what it says about the assistant's goal.

Goal: {goal}

Page content:
{page}

Reply with a single JSON object and nothing else, with three string fields:
"rational": which parts of the page bear on the goal, and why;
"evidence": those parts, quoted or closely paraphrased, keeping every name, number and date;
"summary": a short, self-contained statement of what the page tells about the goal (or that it tells nothing).
"""


def parse_summary_reply(reply: str) -> tuple[str, str]:
    """(evidence, summary) from a model reply holding a JSON object; ValueError if there is none."""
    if not isinstance(reply, str):
        raise ValueError(f"the reply is not text: {type(reply).__name__}")
    reply = re.sub(r"<think>.*?</think>", "", reply, flags=re.DOTALL)
    left, right = reply.find("{"), reply.rfind("}")
    if left < 0 or right < left:
        raise ValueError("the reply holds no JSON object")
    try:
        obj = clean_strings(json.loads(reply[left: right + 1]))
    except RecursionError:
        raise ValueError("the reply's JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("the reply's JSON is not an object")
    parts = []
    for key in ("evidence", "summary"):
        value = obj.get(key)
        if isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"the reply's JSON has no '{key}' text")
        parts.append(value.strip())
    return parts[0], parts[1]


class LLMSummarizer:
    """Asks an OpenAI-compatible /v1/chat/completions endpoint (temperature 0.7 unless set). When every one of the
    1 + `retries` tries fails (unreachable, slower than `timeout`, HTTP error, unusable reply), it raises
    SummaryError (the visit text is then the protocol's miss text), or, only when a `fallback` summariser is given,
    returns that one's summary. Failures are counted in `failures`. A retry waits retry_delay x 2^(attempt-1), or
    the endpoint's Retry-After, capped at `max_retry_delay`; a 4xx that says the request is wrong (not
    408/409/425/429) is not retried. A summary takes at most (1 + retries) x timeout + retries x max_retry_delay."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, retry_delay: float = 1.0, max_retry_delay: float = 30.0, max_tokens: int = 2048,
                 temperature: float = 0.7, fallback: Summarizer | None = None, max_reply_bytes: int = 16 << 20):
        url = base_url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
        self.url = url
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.fallback = fallback
        self.max_reply_bytes = max_reply_bytes
        self.failures = 0
        self._count_lock = threading.Lock()

    def _complete(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try_ends = time.monotonic() + self.timeout  # a reply that trickles in is cut there
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = loads_reply(read_body(response, self.max_reply_bytes, try_ends))
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"unexpected completion layout: {e!r}") from None

    def summarize(self, text: str, goal: str) -> tuple[str, str]:
        prompt = _PROMPT.format(goal=goal, page=text)
        error = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(backoff_delay(attempt, self.retry_delay, self.max_retry_delay, error))
            try:
                return parse_summary_reply(self._complete(prompt))
            except urllib.error.HTTPError as e:
                error = e
                log.warning("summary request to %s failed (attempt %d of %d): %s", self.url, attempt + 1,
                            self.retries + 1, e)
                if not retryable_status(e.code):
                    break
            except TRANSPORT_ERRORS as e:   # URLError and timeouts are OSErrors; unusable replies ValueErrors
                error = e
                log.warning("summary request to %s failed (attempt %d of %d): %s", self.url, attempt + 1,
                            self.retries + 1, e)
        with self._count_lock:
            self.failures += 1
        if self.fallback is None:
            raise SummaryError(f"summary failed after {attempt + 1} {'try' if attempt == 0 else 'tries'}: {error}")
        return self.fallback.summarize(text, goal)
