"""Rewards (docs/protocol.md section 4): answer extraction, normalised matching and judges.

The reward is binary: 1 when the last `<answer>…</answer>` of a response is judged equivalent to one of the
labelled answers; no answer (none, or an empty one) is 0 without asking a judge. Judges: normalised exact match;
an LLM behind an OpenAI-compatible endpoint (exact match only when the endpoint cannot be reached); a local litere
model. Every judge call returns a record that keeps the raw replies.
"""
from __future__ import annotations

import json
import re
import string
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .env.client import (TRANSPORT_ERRORS, ReplyTooLarge, backoff_delay, clean_strings, loads_reply, read_body,
                          retryable_status)

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --- answers --------------------------------------------------------------------------------------------------
def extract_answer(text: str) -> str | None:
    """The stripped content of the last complete `<answer>…</answer>` anywhere in `text`; None when there is none
    or the last one is empty."""
    matches = ANSWER_RE.findall(text)
    return (matches[-1].strip() or None) if matches else None


def answered(prediction: str | None) -> bool:
    """Whether a prediction is an answer at all (records written before empty answers became None may hold "")."""
    return prediction is not None and prediction.strip() != ""


def normalize_answer(text: str) -> str:
    """Lowercase, delete punctuation (ASCII and Unicode P*, leaving no space: "U.S." -> "us"), drop the articles
    a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower()
                   if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, targets: list[str]) -> bool:
    if not answered(prediction):
        return False
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(t) for t in targets)


def token_f1(prediction: str | None, targets: list[str]) -> float:
    """Best bag-of-tokens F1 of the normalised prediction against any target (0 for no prediction)."""
    if not answered(prediction) or not targets:
        return 0.0
    pred = normalize_answer(prediction).split()
    best = 0.0
    for target in targets:
        gold = normalize_answer(target).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


# --- judges ---------------------------------------------------------------------------------------------------
JUDGE_PROMPT = (  # the original's judge prompt, word for word (docs/protocol.md section 4)
    "You are an evaluation assistant. Please determine if the predicted answer is equivalent to the labeled answer.\n\n"
    "Question: {question}\n\n"
    "Labeled Answer: {reference}\n\n"
    "Predicted Answer: {prediction}\n\n"
    "Did the model give an answer **equivalent** to the labeled answer? Please respond with \"Correct\" if they are "
    "equivalent, or \"Incorrect\" if they are not equivalent. Do not include any other text.\n")


@dataclass
class JudgeItem:
    question: str
    prediction: str | None
    targets: list[str]


class JudgeReplyError(ValueError):
    """A judge reply carries no verdict."""


def judge_messages(item: JudgeItem) -> list[dict]:
    """The original's judge prompt as one user message, the labelled answers joined by ", "."""
    user = JUDGE_PROMPT.format(question=item.question, reference=", ".join(item.targets), prediction=item.prediction)
    return [{"role": "user", "content": user}]


MAX_VERDICT_CHARS = 100_000  # a reply's text after its thinking; a judge asked for one word says far less
MAX_JSON_STARTS = 64  # '{' positions tried as the start of the {"reasoning", "judgment"} object


def parse_judgment(reply: str) -> tuple[bool, str]:
    """(correct, reasoning) from a judge reply: the bare `Correct` / `Incorrect` the prompt asks for (quotes, bold
    and a final period tolerated), or a JSON object {"reasoning", "judgment"}; thinking blocks are skipped.
    JudgeReplyError for anything else, however malformed (the work is bounded: a huge or deeply nested reply is
    refused, not parsed for ever)."""
    if not isinstance(reply, str):
        raise JudgeReplyError(f"the reply is not text: {type(reply).__name__}")
    text = reply.rsplit("</think>", 1)[-1]
    if len(text) > MAX_VERDICT_CHARS:
        raise JudgeReplyError(f"the reply is {len(text)} characters long after its thinking; a verdict is one word")
    verdict = text.strip().strip("*\"'`.").lower()  # "Correct", **Correct**, "Correct"., `Incorrect.`
    if verdict in ("correct", "incorrect"):
        return verdict == "correct", ""
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch == "{"][:MAX_JSON_STARTS]
    for start in starts:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(obj, dict) and "judgment" in obj:
            verdict = str(obj["judgment"]).strip().strip(".").lower()
            if verdict in ("correct", "incorrect"):
                return verdict == "correct", clean_strings(str(obj.get("reasoning", "")))
            raise JudgeReplyError(f"judgment must be Correct or Incorrect, got {str(obj['judgment'])[:200]!r}")
    raise JudgeReplyError(f"no Correct / Incorrect verdict in the reply {reply[:200]!r}")


def _record(method: str, correct: bool, replies=(), reasoning: str = "", error: str | None = None) -> dict:
    return {"method": method, "correct": correct, "replies": list(replies), "reasoning": reasoning, "error": error}


def _no_answer_record() -> dict:
    return _record("no_answer", False, reasoning="no answer: no <answer>…</answer>, or an empty one")


def _exact_match_record(item: JudgeItem, method: str = "exact_match", error: str | None = None, replies=()) -> dict:
    return _record(method, exact_match(item.prediction, item.targets), replies, "normalised exact match", error)


class ExactMatchJudge:
    name = "exact_match"

    def judge_many(self, items: list[JudgeItem]) -> list[dict]:
        return [_exact_match_record(it) if answered(it.prediction) else _no_answer_record() for it in items]


class OpenAIJudge:
    """An LLM judge behind an OpenAI-compatible `/v1/chat/completions` endpoint (standard-library HTTP).

    Each item is tried up to 1 + `retries` times, until a reply holds a verdict; a retry waits backoff x
    2^(attempt-1) seconds, or what a 429 / 503's Retry-After asks for, never more than `max_backoff`. A status that
    says the request itself is wrong (4xx other than 408/409/425/429) is not retried. A try lasts about `timeout`
    seconds at most (each socket operation; the reply must be complete `timeout` after the try began), so an item
    takes at most about (1 + retries) x timeout + retries x max_backoff. A judge that answered but never gave a
    verdict counts as Incorrect (method "llm", with the replies and the reason in `error`). Only when no try
    reached the endpoint (transport or HTTP errors every time) does the record fall back to normalised exact match
    (method "exact_match_fallback", which the RL step's judge histogram and the evaluation report count). At most
    `max_concurrency` requests are in flight at once. No reply, however malformed, raises.
    """
    name = "llm"

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, max_concurrency: int = 8, backoff: float = 1.0, max_backoff: float = 30.0,
                 max_tokens: int = 1024, max_reply_bytes: int = 4 << 20):
        url = base_url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url = (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"
        self.url, self.model, self.api_key = url, model, api_key
        self.timeout, self.retries, self.backoff, self.max_tokens = timeout, retries, backoff, max_tokens
        self.max_backoff, self.max_reply_bytes = max_backoff, max_reply_bytes
        self.max_concurrency = max_concurrency

    def _post(self, messages: list[dict]) -> str:
        """The reply's text; OSError / HTTPException when the endpoint cannot be reached or answers with an HTTP
        error (urllib's HTTPError, an OSError), JudgeReplyError when its answer is not a chat completion."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try_ends = time.monotonic() + self.timeout
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            try:
                raw = read_body(response, self.max_reply_bytes, try_ends)
            except ReplyTooLarge as e:
                raise JudgeReplyError(f"the answer is not a chat completion: {e}") from None
        try:
            content = loads_reply(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeReplyError(f"the answer is not a chat completion: {raw[:200]!r}") from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise JudgeReplyError(f"the completion's content is not text: {str(content)[:200]!r}")
        return content

    def judge(self, item: JudgeItem) -> dict:
        if not answered(item.prediction):
            return _no_answer_record()
        replies: list[str] = []
        reached = False
        error, last = None, None
        tries = 0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(backoff_delay(attempt, self.backoff, self.max_backoff, last))
            tries += 1
            try:
                reply = self._post(judge_messages(item))
            except JudgeReplyError as e:  # reached, but the answer is not a completion
                reached, error, last = True, str(e), e
                replies.append(f"[bad answer] {error}")
                continue
            except urllib.error.HTTPError as e:
                error, last = f"HTTPError {e.code}: {e.reason}", e
                replies.append(f"[request failed] {error}")
                if retryable_status(e.code):
                    continue
                break
            except TRANSPORT_ERRORS as e:  # timeouts, refusals, broken HTTP, bad URLs
                error, last = f"{type(e).__name__}: {e}", e
                replies.append(f"[request failed] {error}")
                continue
            reached, last = True, None
            replies.append(reply)
            try:
                correct, reasoning = parse_judgment(reply)
            except JudgeReplyError as e:
                error = str(e)
                continue
            return _record("llm", correct, replies, reasoning)
        tried = f"{tries} {'try' if tries == 1 else 'tries'}"
        if reached:
            return _record("llm", False, replies, error=f"no verdict after {tried} ({error}); counted as Incorrect")
        return _exact_match_record(item, "exact_match_fallback", replies=replies,
                                   error=f"judge unreachable after {tried} ({error}); fell back to exact match")

    def judge_many(self, items: list[JudgeItem]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrency)) as pool:
            return list(pool.map(self.judge, items))


class LocalJudge:
    """The same judge prompt answered greedily by a local litere model through the sampler; a reply without a
    verdict counts as Incorrect (greedy decoding would give the same reply again)."""
    name = "local"

    def __init__(self, sampler, tokenizer, *, max_new_tokens: int = 1024):
        self.sampler, self.tokenizer, self.max_new_tokens = sampler, tokenizer, max_new_tokens
        self._lock = threading.Lock()

    def judge_many(self, items: list[JudgeItem]) -> list[dict]:
        from .sampler import SamplingParams

        records: list[dict | None] = [None if answered(it.prediction) else _no_answer_record() for it in items]
        todo = [i for i, r in enumerate(records) if r is None]
        if todo:
            prompts = [self.tokenizer.encode_messages(judge_messages(items[i]), add_generation_prompt=True)
                       for i in todo]
            params = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens,
                                    stop_token_ids=self.tokenizer.stop_token_ids)
            with self._lock:
                outputs = self.sampler.generate(prompts, params)
            for i, out in zip(todo, outputs):
                reply = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
                try:
                    correct, reasoning = parse_judgment(reply)
                except JudgeReplyError as e:
                    records[i] = _record("local", False, [reply], error=f"{e}; counted as Incorrect")
                    continue
                records[i] = _record("local", correct, [reply], reasoning)
        return records


def score_trajectories(trajectories: list, judge) -> list:
    """Judge every trajectory's extracted answer against its labelled answers; sets `.reward` and `.judge`."""
    items = [JudgeItem(t.question, t.answer, list(t.answers)) for t in trajectories]
    for traj, record in zip(trajectories, judge.judge_many(items)):
        traj.judge = record
        traj.reward = 1.0 if record["correct"] else 0.0
    return trajectories
