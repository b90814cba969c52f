"""Rewards (PROTOCOL.md section 4): answer extraction, normalised matching and judges.

The reward is binary: 1 when the last `<answer>…</answer>` of a response is judged equivalent to one of the
labelled answers. Judges: normalised exact match; an LLM behind an OpenAI-compatible endpoint (falling back to
exact match when it fails); a local litere model. Every judge call returns a record that keeps the raw replies.
"""
from __future__ import annotations

import http.client
import json
import re
import string
import threading
import time
import unicodedata
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --- answers --------------------------------------------------------------------------------------------------
def extract_answer(text: str) -> str | None:
    """The stripped content of the last complete `<answer>…</answer>` anywhere in `text`, or None."""
    matches = ANSWER_RE.findall(text)
    return matches[-1].strip() if matches else None


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (ASCII and Unicode), drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(" " if ch in string.punctuation or unicodedata.category(ch).startswith("P") else ch
                   for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, targets: list[str]) -> bool:
    if prediction is None:
        return False
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(t) for t in targets)


def token_f1(prediction: str | None, targets: list[str]) -> float:
    """Best bag-of-tokens F1 of the normalised prediction against any target (0 for no prediction)."""
    if prediction is None or not targets:
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
JUDGE_SYSTEM = "You grade answers to research questions. You reply with one JSON object and nothing else."
JUDGE_TEMPLATE = """Question: {question}
Labelled answer(s): {targets}
Predicted answer: {prediction}

Decide whether the predicted answer means the same as the labelled answer (any one of them, if several are given).
Differences in wording, formatting, capitalisation or units that do not change the meaning are fine; a prediction
that is vaguer, partly wrong or names something else is incorrect.
Reply with JSON only, in this form:
{{"reasoning": "<one or two sentences>", "judgment": "Correct"}}
where judgment is exactly "Correct" or "Incorrect"."""


@dataclass
class JudgeItem:
    question: str
    prediction: str | None
    targets: list[str]


class JudgeReplyError(ValueError):
    """A judge reply carries no usable {reasoning, judgment} JSON."""


def judge_messages(item: JudgeItem) -> list[dict]:
    user = JUDGE_TEMPLATE.format(question=item.question, targets=", ".join(item.targets),
                                 prediction=item.prediction)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_judgment(reply: str) -> tuple[bool, str]:
    """(correct, reasoning) from a judge reply; tolerates thinking blocks, code fences and text around the JSON."""
    text = reply.rsplit("</think>", 1)[-1]
    decoder = json.JSONDecoder()
    for start in [i for i, ch in enumerate(text) if ch == "{"]:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "judgment" in obj:
            verdict = str(obj["judgment"]).strip().strip(".").lower()
            if verdict in ("correct", "incorrect"):
                return verdict == "correct", str(obj.get("reasoning", ""))
            raise JudgeReplyError(f"judgment must be Correct or Incorrect, got {obj['judgment']!r}")
    raise JudgeReplyError(f"no JSON object with a judgment in the reply {reply[:200]!r}")


def _no_answer_record() -> dict:
    return {"method": "no_answer", "correct": False, "replies": [], "reasoning": "no <answer> in the response",
            "error": None}


def _exact_match_record(item: JudgeItem, error: str | None = None, replies=()) -> dict:
    return {"method": "exact_match", "correct": exact_match(item.prediction, item.targets), "replies": list(replies),
            "reasoning": "normalised exact match", "error": error}


class ExactMatchJudge:
    name = "exact_match"

    def judge_many(self, items: list[JudgeItem]) -> list[dict]:
        return [_no_answer_record() if it.prediction is None else _exact_match_record(it) for it in items]


class OpenAIJudge:
    """An LLM judge behind an OpenAI-compatible `/v1/chat/completions` endpoint (standard-library HTTP).

    Each item is tried up to 1 + `retries` times (transport errors, HTTP errors and unusable replies alike); if all
    fail, the record falls back to normalised exact match and says why. At most `max_concurrency` requests are in
    flight at once.
    """
    name = "llm"

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, max_concurrency: int = 8, backoff: float = 1.0, max_tokens: int = 1024):
        url = base_url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url = (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"
        self.url, self.model, self.api_key = url, model, api_key
        self.timeout, self.retries, self.backoff, self.max_tokens = timeout, retries, backoff, max_tokens
        self.max_concurrency = max_concurrency

    def _post(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload = json.loads(response.read().decode("utf-8"))
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeReplyError(f"response has no choices[0].message.content: {str(payload)[:200]}") from None

    def judge(self, item: JudgeItem) -> dict:
        if item.prediction is None:
            return _no_answer_record()
        replies: list[str] = []
        error = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._post(judge_messages(item))
            except (OSError, ValueError, http.client.HTTPException) as e:
                # timeouts, refused connections and HTTP status errors are OSErrors; bad JSON is a ValueError
                error = f"{type(e).__name__}: {e}"
                replies.append(f"[request failed] {error}")
                continue
            replies.append(reply)
            try:
                correct, reasoning = parse_judgment(reply)
            except JudgeReplyError as e:
                error = str(e)
                continue
            return {"method": "llm", "correct": correct, "replies": replies, "reasoning": reasoning, "error": None}
        return _exact_match_record(item, error=f"judge failed after {self.retries + 1} tries ({error}); "
                                               "fell back to exact match", replies=replies)

    def judge_many(self, items: list[JudgeItem]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrency)) as pool:
            return list(pool.map(self.judge, items))


class LocalJudge:
    """The same judge prompt answered greedily by a local litere model through the sampler."""
    name = "local"

    def __init__(self, sampler, tokenizer, *, max_new_tokens: int = 1024):
        self.sampler, self.tokenizer, self.max_new_tokens = sampler, tokenizer, max_new_tokens
        self._lock = threading.Lock()

    def judge_many(self, items: list[JudgeItem]) -> list[dict]:
        from .sampler import SamplingParams

        records: list[dict | None] = [_no_answer_record() if it.prediction is None else None for it in items]
        todo = [i for i, r in enumerate(records) if r is None]
        if todo:
            prompts = [self.tokenizer.encode_messages(judge_messages(items[i]), add_generation_prompt=True)
                       for i in todo]
            params = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens,
                                    stop_token_ids=(self.tokenizer.im_end_id,))
            with self._lock:
                outputs = self.sampler.generate(prompts, params)
            for i, out in zip(todo, outputs):
                reply = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
                try:
                    correct, reasoning = parse_judgment(reply)
                except JudgeReplyError as e:
                    records[i] = _exact_match_record(items[i], error=f"{e}; fell back to exact match",
                                                     replies=[reply])
                    continue
                records[i] = {"method": "local", "correct": correct, "replies": [reply], "reasoning": reasoning,
                              "error": None}
        return records


def score_trajectories(trajectories: list, judge) -> list:
    """Judge every trajectory's extracted answer against its labelled answers; sets `.reward` and `.judge`."""
    items = [JudgeItem(t.question, t.answer, list(t.answers)) for t in trajectories]
    for traj, record in zip(trajectories, judge.judge_many(items)):
        traj.judge = record
        traj.reward = 1.0 if record["correct"] else 0.0
    return trajectories
