"""Answer extraction, matching, pass@k / avg@k, and judges (including a stub OpenAI-compatible endpoint)."""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from litere.agent import ToolCallRecord, Trajectory
from litere.cli import add_judge_arguments, judge_from_args
from litere.evaluation import pass_at_k, report_markdown, summarize
from litere.reward import (ExactMatchJudge, JudgeItem, JudgeReplyError, LocalJudge, OpenAIJudge, exact_match,
                           extract_answer, normalize_answer, parse_judgment, score_trajectories, token_f1)


def test_extract_answer_takes_the_last_complete_tag():
    text = "<think>maybe <answer>Paris</answer>?</think>\n<answer>\n Lyon \n</answer> trailing <answer>cut"
    assert extract_answer(text) == "Lyon"
    assert extract_answer("no tags") is None
    assert extract_answer("<answer>a\nb</answer>") == "a\nb"


def test_normalisation_and_matching():
    assert normalize_answer("  The Eiffel-Tower!! ") == "eiffel tower"
    assert normalize_answer("«An Apple» a day…") == "apple day"
    assert normalize_answer("Theatre of the Arts") == "theatre of arts"
    assert exact_match("the bo lin.", ["Ixo", "Bo Lin"]) and not exact_match("Bo", ["Bo Lin"])
    assert not exact_match(None, ["x"])
    assert token_f1("Bo Lin", ["Bo Lin Jr"]) == pytest.approx(0.8)
    assert token_f1("x", ["y", "x"]) == 1.0 and token_f1(None, ["x"]) == 0.0 and token_f1("the", ["a"]) == 1.0


def test_pass_at_k_known_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    with pytest.raises(ValueError, match="k=5, n=4"):
        pass_at_k(4, 1, 5)


def traj(qid, i, reward, source="a", termination="answer", answer="x", calls=()):
    t = Trajectory(qid, i, "Q?", ["x"], source, [1, 2], response_ids=[5, 6, 7], response_mask=[1, 1, 0],
                   rollout_logprobs=[-1, -1, 0], num_turns=2, answer=answer, termination=termination,
                   tool_calls=list(calls), elapsed_s=1.0)
    t.reward = reward
    return t


def test_summarize_avg_and_pass_at_k():
    search = ToolCallRecord(1, "search", {"query": ["x"]}, latency_s=0.01, success=True)
    broken = ToolCallRecord(1, "search", {"query": ["x"]}, latency_s=0.03, success=False)
    trajs = ([traj("q1", i, r, calls=[search]) for i, r in enumerate([1, 0, 0, 0])]
             + [traj("q2", i, 0.0, "b", "budget", None, [broken]) for i in range(4)]
             + [traj("q3", i, r) for i, r in enumerate([1, 1, 0, 1])])
    report = summarize(trajs)
    assert report["k"] == 4 and report["questions"] == 3 and report["trajectories"] == 12
    assert report["avg@k"] == pytest.approx(4 / 12) and report["pass@k"] == pytest.approx(2 / 3)
    assert report["by_data_source"]["a"]["avg@k"] == pytest.approx(4 / 8)
    assert report["by_data_source"]["b"] == {"questions": 1, "trajectories": 4, "avg@k": 0.0, "pass@k": 0.0}
    assert report["termination"] == {"answer": 8, "budget": 4}
    assert report["tools"]["search"]["calls"] == 8 and report["tools"]["search"]["success_rate"] == 0.5
    assert report["per_trajectory"]["sampled_tokens"]["mean"] == 2 and report["answered"] == pytest.approx(8 / 12)
    one = summarize(trajs, k=1)
    assert one["pass@k"] == pytest.approx((0.25 + 0 + 0.75) / 3)  # pass@1 is avg@1 per question
    md = report_markdown(report)
    assert "| **all** | 3 | 33.3 | 66.7 |" in md and "| budget | 4 |" in md
    trajs[0].reward = None
    with pytest.raises(ValueError, match="not scored"):
        summarize(trajs)


@pytest.mark.parametrize("reply,expected", [
    ('{"reasoning": "same", "judgment": "Correct"}', True),
    ('```json\n{"reasoning": "differs", "judgment": "Incorrect"}\n```', False),
    ('<think>{"judgment": "Correct"} hmm</think>Verdict: {"reasoning": "a {brace}", "judgment": "incorrect."}', False),
    ('noise {not json} then {"reasoning": "ok", "judgment": " correct "}', True),
])
def test_parse_judgment_tolerates_wrapping(reply, expected):
    assert parse_judgment(reply)[0] is expected


@pytest.mark.parametrize("reply", ["Correct", '{"reasoning": "x"}', '{"judgment": "Maybe"}', "", '{"judgment": '])
def test_parse_judgment_rejects_malformed(reply):
    with pytest.raises(JudgeReplyError):
        parse_judgment(reply)


class StubJudge:
    """An OpenAI-compatible /v1/chat/completions stub on 127.0.0.1 with an ephemeral port."""

    def __init__(self, reply="correct", delay=0.0):
        self.reply, self.delay, self.requests = reply, delay, []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append((self.path, body))
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                time.sleep(stub.delay)
                with stub.lock:
                    stub.in_flight -= 1
                try:
                    self.reply_to_client()
                except (BrokenPipeError, ConnectionResetError):  # the client timed out, as the test wanted
                    pass

            def reply_to_client(self):
                if stub.reply == "error":
                    self.send_error(503, "overloaded")
                    return
                content = {"correct": '{"reasoning": "same person", "judgment": "Correct"}',
                           "malformed": "I believe this is right."}[stub.reply]
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def make(**kw):
        servers.append(StubJudge(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


ITEM = JudgeItem("Who founded Ixo?", "B. Lin", ["Bo Lin", "Lin Bo"])


def test_llm_judge_asks_at_temperature_zero(stub):
    server = stub()
    record = OpenAIJudge(server.url, "judge-model", api_key="k").judge(ITEM)
    assert record == {"method": "llm", "correct": True, "replies": ['{"reasoning": "same person", '
                                                                    '"judgment": "Correct"}'],
                      "reasoning": "same person", "error": None}
    path, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["temperature"] == 0.0 and body["model"] == "judge-model"
    assert "Bo Lin, Lin Bo" in body["messages"][-1]["content"] and "B. Lin" in body["messages"][-1]["content"]


def test_malformed_replies_fall_back_to_exact_match(stub):
    server = stub(reply="malformed")
    judge = OpenAIJudge(server.url + "/v1", "m", retries=2, backoff=0.0)
    record = judge.judge(JudgeItem("Q?", "the Bo Lin", ["Bo Lin"]))
    assert record["method"] == "exact_match" and record["correct"] is True
    assert record["replies"] == ["I believe this is right."] * 3 and "fell back to exact match" in record["error"]
    assert len(server.requests) == 3


def test_http_errors_fall_back_and_are_kept(stub):
    server = stub(reply="error")
    record = OpenAIJudge(server.url, "m", retries=1, backoff=0.0).judge(ITEM)
    assert record["method"] == "exact_match" and record["correct"] is False
    assert len(record["replies"]) == 2 and "503" in record["replies"][0]


def test_judge_timeout_falls_back(stub):
    server = stub(delay=1.0)
    judge = OpenAIJudge(server.url, "m", timeout=0.2, retries=1, backoff=0.0)
    start = time.perf_counter()
    record = judge.judge(ITEM)
    assert time.perf_counter() - start < 0.9
    assert record["method"] == "exact_match" and "timed out" in record["error"]


def test_judge_concurrency_is_bounded(stub):
    server = stub(delay=0.1)
    judge = OpenAIJudge(server.url, "m", max_concurrency=2)
    items = [ITEM] * 6 + [JudgeItem("Q?", None, ["x"])]
    records = judge.judge_many(items)
    assert [r["method"] for r in records] == ["llm"] * 6 + ["no_answer"]
    assert server.max_in_flight == 2 and len(server.requests) == 6


def test_unreachable_endpoint_falls_back():
    record = OpenAIJudge("http://127.0.0.1:9", "m", timeout=0.5, retries=0).judge(ITEM)
    assert record["method"] == "exact_match" and record["replies"][0].startswith("[request failed]")


class _Out:
    def __init__(self, ids):
        self.token_ids = ids


class _Tok:
    """Encodes the reply text one character per id so the fake sampler can hand it back."""
    im_end_id = 0

    def encode_messages(self, messages, add_generation_prompt=False):
        return [ord(c) for c in messages[-1]["content"]]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


def test_local_judge_uses_the_sampler_greedily():
    replies = {"B. Lin": '<think>same</think>{"reasoning": "r", "judgment": "Correct"}', "Ixo": "no idea"}

    class Sampler:
        def generate(self, prompts, params):
            self.params = params
            return [_Out([ord(c) for c in replies["B. Lin" if "B. Lin" in "".join(map(chr, p)) else "Ixo"]])
                    for p in prompts]

    sampler = Sampler()
    records = LocalJudge(sampler, _Tok()).judge_many([ITEM, JudgeItem("Q?", "Ixo", ["ixo"]),
                                                      JudgeItem("Q?", None, ["x"])])
    assert sampler.params.temperature == 0.0 and sampler.params.stop_token_ids == (0,)
    assert [(r["method"], r["correct"]) for r in records] == [("local", True), ("exact_match", True),
                                                              ("no_answer", False)]
    assert records[1]["replies"] == ["no idea"]


def test_score_trajectories_sets_reward():
    trajs = [traj("q", 0, None, answer="The X."), traj("q", 1, None, answer="y"), traj("q", 2, None, answer=None)]
    score_trajectories(trajs, ExactMatchJudge())
    assert [t.reward for t in trajs] == [1.0, 0.0, 0.0]
    assert [t.judge["method"] for t in trajs] == ["exact_match", "exact_match", "no_answer"]


def test_judge_options(monkeypatch):
    parser = argparse.ArgumentParser()
    add_judge_arguments(parser)
    assert isinstance(judge_from_args(parser.parse_args([])), ExactMatchJudge)
    monkeypatch.setenv("JUDGE_KEY", "secret")
    judge = judge_from_args(parser.parse_args(["--judge", "llm", "--judge-url", "http://h:9/v1", "--judge-model", "m",
                                               "--judge-api-key-env", "JUDGE_KEY", "--judge-concurrency", "3"]))
    assert (judge.url, judge.api_key, judge.max_concurrency) == ("http://h:9/v1/chat/completions", "secret", 3)
    with pytest.raises(SystemExit, match="--judge-url and --judge-model"):
        judge_from_args(parser.parse_args(["--judge", "llm"]))
    with pytest.raises(SystemExit, match="--judge-model DIR"):
        judge_from_args(parser.parse_args(["--judge", "local"]))
