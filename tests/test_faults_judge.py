"""Faults injected into the LLM judge (docs/protocol.md section 4): an endpoint that is down, hangs, trickles,
answers 500 / 429 / 401 / garbage / huge / non-UTF-8 replies. Each ends in a verdict or a counted fallback, within
a bounded number of requests and a bounded time; replies are fuzzed through parse_judgment and the HTTP path.

The fake endpoint is tests/fault_server.py."""
import json
import random
import time

import pytest

from litere.env.client import backoff_delay, retry_after
from litere.reward import JudgeItem, JudgeReplyError, OpenAIJudge, parse_judgment, score_trajectories
from fault_server import closed_port_url, completion, fuzz_replies, timed


ITEM = JudgeItem("Who founded Ixo?", "the Bo Lin", ["Bo Lin"])  # exact match says correct


class _Err:
    def __init__(self, value):
        self.headers = {"Retry-After": value}


def test_backoff_is_exponential_capped_and_honours_retry_after():
    assert [backoff_delay(a, 0.5, 3.0) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(1, 0.5, 30.0, _Err("7")) == 7.0
    assert backoff_delay(1, 0.5, 3.0, _Err("120")) == 3.0  # honoured within the cap
    assert backoff_delay(2, 0.5, 3.0, _Err("soon")) == 1.0  # unreadable: the exponential delay
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert 3.0 < retry_after(_Err(when)) <= 5.0
    assert retry_after(_Err("-3")) == 0.0 and retry_after(_Err("nan")) is None and retry_after(None) is None


# --- faults ---------------------------------------------------------------------------------------------------
def test_endpoint_down_falls_back_after_bounded_tries():
    judge = OpenAIJudge(closed_port_url(), "m", timeout=1.0, retries=2, backoff=0.05)
    record, seconds = timed(judge.judge, ITEM)
    assert record["method"] == "exact_match_fallback" and record["correct"] is True
    assert len(record["replies"]) == 3 and "refused" in record["replies"][0].lower()
    assert "unreachable after 3 tries" in record["error"] and seconds < 0.05 + 0.1 + 1.0


def test_endpoint_that_hangs_times_out_each_try(fault):
    server = fault("hang")
    judge = OpenAIJudge(server.url, "m", timeout=0.3, retries=1, backoff=0.05)
    record, seconds = timed(judge.judge, ITEM)
    assert record["method"] == "exact_match_fallback" and "timed out" in record["error"]
    assert server.requests == 2 and seconds < 2 * 0.3 + 0.05 + 0.5


def test_a_trickling_reply_is_cut_at_the_timeout(fault):
    """Bytes every 50 ms never trip a socket timeout; the whole reply must still arrive within `timeout`."""
    server = fault("trickle")
    judge = OpenAIJudge(server.url, "m", timeout=0.4, retries=1, backoff=0.05)
    record, seconds = timed(judge.judge, ITEM)
    assert record["method"] == "exact_match_fallback" and "did not arrive in time" in record["error"]
    assert server.requests == 2 and seconds < 2 * 0.4 + 0.05 + 0.5


def test_server_errors_are_retried_with_exponential_backoff_then_fall_back(fault):
    server = fault(("status", 500))
    judge = OpenAIJudge(server.url, "m", retries=3, backoff=0.1, max_backoff=0.25)
    record, seconds = timed(judge.judge, ITEM)
    assert record["method"] == "exact_match_fallback" and record["correct"] is True
    assert server.requests == 4 and "HTTPError 500" in record["replies"][0]
    gaps = server.gaps()  # waits of 0.1, 0.2, then 0.4 capped at 0.25
    assert [round(g, 1) for g in gaps] == [0.1, 0.2, 0.3] or all(lo <= g < lo + 0.15 for g, lo in
                                                                  zip(gaps, (0.1, 0.2, 0.25)))
    assert seconds < 0.1 + 0.2 + 0.25 + 0.5


def test_rate_limits_honour_retry_after_within_the_cap(fault):
    server = fault(("status", 429, {"Retry-After": "0.4"}), ("status", 429, {"Retry-After": "3600"}),
                   ("ok", "Incorrect"))
    judge = OpenAIJudge(server.url, "m", retries=2, backoff=0.01, max_backoff=0.6)
    record, seconds = timed(judge.judge, ITEM)
    assert (record["method"], record["correct"]) == ("llm", False)  # the verdict, not exact match
    first, second = server.gaps()
    assert 0.4 <= first < 0.55 and 0.6 <= second < 0.75  # as asked; an hour capped at max_backoff
    assert seconds < 0.4 + 0.6 + 0.5


def test_a_request_the_endpoint_refuses_is_not_retried(fault):
    server = fault(("status", 401))
    record = OpenAIJudge(server.url, "m", retries=3, backoff=0.05).judge(ITEM)
    assert record["method"] == "exact_match_fallback" and server.requests == 1
    assert "unreachable after 1 try" in record["error"] and "401" in record["error"]


@pytest.mark.parametrize("behaviour", ["reset", "badstatus"])
def test_broken_connections_fall_back(fault, behaviour):
    server = fault(behaviour)
    record = OpenAIJudge(server.url, "m", timeout=1.0, retries=1, backoff=0.01).judge(ITEM)
    assert record["method"] == "exact_match_fallback" and server.requests == 2


@pytest.mark.parametrize("body,why", [
    (b"<html>502 Bad Gateway</html>", "not a chat completion"),
    (b'{"choices": []}', "not a chat completion"),
    (completion({"text": "Correct"}), "content is not text"),
    (completion(["Correct"]), "content is not text"),
    (completion("Correct")[:-7], "not a chat completion"),  # cut short
    (b"\xff\xfe" + completion("Correct")[2:], "not a chat completion"),  # not UTF-8
    (completion("x" * 300_000), "larger than 262144 bytes"),
    (b'{"choices": ' * 50_000, "not a chat completion"),  # nested beyond the parser's recursion
])
def test_garbage_answers_count_as_no_verdict_after_bounded_tries(fault, body, why):
    server = fault(("raw", body))
    judge = OpenAIJudge(server.url, "m", retries=2, backoff=0.01, max_reply_bytes=256 << 10)
    record = judge.judge(ITEM)
    assert (record["method"], record["correct"]) == ("llm", False) and server.requests == 3
    assert why in record["error"] and "counted as Incorrect" in record["error"]
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # what a trajectory file will hold


def test_a_verdict_survives_non_utf8_bytes_and_lone_surrogates(fault):
    data = completion("Correct").replace(b'"Correct"', b'"\\ud800 \xff Correct"')  # escaped surrogate, raw 0xff
    server = fault(("raw", data), ("raw", completion("\udc80Correct")), ("ok", "Correct"))
    judge = OpenAIJudge(server.url, "m", retries=2, backoff=0.01)
    record = judge.judge(ITEM)
    assert (record["method"], record["correct"]) == ("llm", True) and server.requests == 3
    json.dumps(record, ensure_ascii=False).encode("utf-8")


def test_fallbacks_are_counted_in_the_rl_step_and_the_report():
    from litere.agent import Trajectory
    from litere.evaluation import summarize
    from litere.rl.metrics import rollout_metrics, trajectory_summary

    trajs = [Trajectory("q", i, "Q?", ["Bo Lin"], "s", [1], answer=a) for i, a in enumerate(["Bo Lin", "x", None])]
    score_trajectories(trajs, OpenAIJudge(closed_port_url(), "m", timeout=1.0, retries=1, backoff=0.01))
    assert [t.reward for t in trajs] == [1.0, 0.0, 0.0]  # the run goes on, scored by exact match
    metrics = rollout_metrics([trajectory_summary(t, 0) for t in trajs])
    assert metrics["judge"] == {"exact_match_fallback": 2, "no_answer": 1}
    report = summarize(trajs)
    assert report["judge"] == {"exact_match_fallback": 2, "no_answer": 1} and report["judge_errors"] == 2


# --- fuzzed replies -------------------------------------------------------------------------------------------
def test_parse_judgment_fuzz():
    outcomes = {"verdict": 0, "no verdict": 0}
    start = time.monotonic()
    for reply, expected in fuzz_replies(seed=0, n=3000):
        try:
            correct, reasoning = parse_judgment(reply)
        except JudgeReplyError:
            assert expected is None, reply
            outcomes["no verdict"] += 1
            continue
        assert isinstance(correct, bool) and isinstance(reasoning, str)
        assert expected is None or correct is expected, reply
        outcomes["verdict"] += 1
    assert time.monotonic() - start < 15 and outcomes["verdict"] >= 600 and outcomes["no verdict"] >= 1000
    print(f"parse_judgment fuzz: 3000 cases, {outcomes}")


def fuzz_bodies(seed: int, n: int) -> list[tuple[bytes, bool | None]]:
    """(answer body, the verdict it holds or None)."""
    rng = random.Random(seed)
    bodies = []
    for i, (reply, expected) in enumerate(fuzz_replies(seed, n)):
        kind = i % 4
        if kind == 0:  # a completion holding the fuzzed reply (lone surrogates travel as JSON escapes)
            bodies.append((completion(reply)[: 1 << 20], expected))
        elif kind == 1:  # a completion of the wrong shape
            bodies.append((json.dumps(rng.choice([{}, [], {"choices": None}, {"choices": [{}]},
                                                  {"choices": [{"message": {"content": rng.choice([1, [], {}])}}]},
                                                  "Correct"])).encode(), None))
        elif kind == 2:  # raw bytes: random, or a completion cut short
            bodies.append((bytes(rng.randrange(256) for _ in range(rng.randrange(300))) if rng.random() < 0.5
                           else completion(reply)[: rng.randrange(1, 60)], None))
        else:
            bodies.append((reply.encode("utf-8", "surrogatepass")[: 1 << 20], None))
    return bodies


def test_judge_http_path_fuzz(fault):
    """A few hundred fuzzed answers through the HTTP path: each gives a verdict or counted no-verdict record,
    one request each, and a record that can be written to a trajectory file."""
    bodies = fuzz_bodies(seed=1, n=300)

    def pick(request: bytes) -> tuple:
        content = json.loads(request)["messages"][0]["content"]
        case = int(content.split("Predicted Answer: case ")[1].split("\n")[0])
        return ("raw", bodies[case][0])

    server = fault(pick=pick)
    judge = OpenAIJudge(server.url, "m", retries=0, timeout=5.0, max_concurrency=8, max_reply_bytes=256 << 10)
    records = judge.judge_many([JudgeItem("Q?", f"case {i}", ["case 0"]) for i in range(len(bodies))])
    assert server.requests == len(bodies)
    outcomes = {"verdict": 0, "no verdict (counted as Incorrect)": 0}
    for record, (_, expected) in zip(records, bodies):
        assert record["method"] == "llm" and isinstance(record["correct"], bool)
        json.dumps(record, ensure_ascii=False).encode("utf-8")
        if expected is not None:
            assert record["error"] is None and record["correct"] is expected
        outcomes["verdict" if record["error"] is None else "no verdict (counted as Incorrect)"] += 1
    assert outcomes["verdict"] >= 10 and outcomes["no verdict (counted as Incorrect)"] >= 150
    print(f"judge HTTP fuzz: {len(bodies)} answers, {outcomes}")
