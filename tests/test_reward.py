"""Answer extraction, matching, pass@k / avg@k, and judges (including a stub OpenAI-compatible endpoint)."""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from litere import evaluation
from litere.agent import MALFORMED_CALL, ToolCallRecord, Trajectory
from litere.cli import add_judge_arguments, judge_from_args
from litere.evaluation import evaluate, pass_at_k, report_markdown, summarize
from litere.reward import (JUDGE_PROMPT, ExactMatchJudge, JudgeItem, JudgeReplyError, LocalJudge, OpenAIJudge,
                           exact_match, extract_answer, judge_messages, normalize_answer, parse_judgment,
                           score_trajectories, token_f1)


def test_extract_answer_takes_the_last_complete_tag():
    text = "<think>maybe <answer>Paris</answer>?</think>\n<answer>\n Lyon \n</answer> trailing <answer>cut"
    assert extract_answer(text) == "Lyon"
    assert extract_answer("no tags") is None
    assert extract_answer("<answer>a\nb</answer>") == "a\nb"


def test_an_empty_last_answer_is_no_answer():
    assert extract_answer("<answer>Paris</answer> then <answer> \n </answer>") is None
    assert extract_answer("<answer></answer>") is None


def test_punctuation_is_deleted_not_spaced():
    assert normalize_answer("U.S.") == "us" and normalize_answer("1,000") == "1000"
    assert normalize_answer("The Beatles!") == "beatles" and normalize_answer("  The Eiffel-Tower!! ") == "eiffeltower"
    assert exact_match("U.S.", ["us"]) and exact_match("1,000", ["1000"])


def test_normalisation_and_matching():
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
    ("Correct", True), ("Incorrect", False), ("  Incorrect.\n", False), ('"Correct"', True), ("**Correct**", True),
    ("<think>It says Incorrect? No.</think>\nCorrect", True),
])
def test_parse_judgment_tolerates_wrapping(reply, expected):
    assert parse_judgment(reply)[0] is expected


@pytest.mark.parametrize("reply", ["Correct or Incorrect", "It is correct", '{"reasoning": "x"}',
                                   '{"judgment": "Maybe"}', "", '{"judgment": '])
def test_parse_judgment_rejects_malformed(reply):
    with pytest.raises(JudgeReplyError):
        parse_judgment(reply)


class StubJudge:
    """An OpenAI-compatible /v1/chat/completions stub on 127.0.0.1 with an ephemeral port. `reply` is one behaviour
    or a list of them, one per request (the last repeats): "correct" (bare verdict), "json", "malformed", "error"
    (HTTP 503) or "garbage" (a 200 that is not a completion)."""

    def __init__(self, reply="correct", delay=0.0):
        self.replies = reply if isinstance(reply, list) else [reply]
        self.delay, self.requests = delay, []
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
                    behaviour = stub.replies[min(len(stub.requests), len(stub.replies)) - 1]
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                time.sleep(stub.delay)
                with stub.lock:
                    stub.in_flight -= 1
                try:
                    self.reply_to_client(behaviour)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out, as the test wanted
                    pass

            def reply_to_client(self, behaviour):
                if behaviour == "error":
                    self.send_error(503, "overloaded")
                    return
                if behaviour == "garbage":
                    data = b"<html>proxy error</html>"
                else:
                    content = {"correct": "Correct", "json": '{"reasoning": "same person", "judgment": "Correct"}',
                               "malformed": "I believe this is right."}[behaviour]
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


def test_llm_judge_sends_the_original_prompt_at_temperature_zero(stub):
    server = stub()
    record = OpenAIJudge(server.url, "judge-model", api_key="k").judge(ITEM)
    assert record == {"method": "llm", "correct": True, "replies": ["Correct"], "reasoning": "", "error": None}
    path, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["temperature"] == 0.0 and body["model"] == "judge-model"
    assert body["messages"] == [{"role": "user", "content": (
        "You are an evaluation assistant. Please determine if the predicted answer is equivalent to the labeled "
        "answer.\n\nQuestion: Who founded Ixo?\n\nLabeled Answer: Bo Lin, Lin Bo\n\nPredicted Answer: B. Lin\n\n"
        "Did the model give an answer **equivalent** to the labeled answer? Please respond with \"Correct\" if they "
        "are equivalent, or \"Incorrect\" if they are not equivalent. Do not include any other text.\n")}]
    assert judge_messages(ITEM)[0]["content"] == JUDGE_PROMPT.format(question=ITEM.question, reference="Bo Lin, Lin Bo",
                                                                     prediction="B. Lin")


def test_llm_judge_accepts_the_json_form(stub):
    record = OpenAIJudge(stub(reply="json").url, "m").judge(ITEM)
    assert (record["method"], record["correct"], record["reasoning"]) == ("llm", True, "same person")


def test_replies_without_a_verdict_count_as_incorrect(stub):
    server = stub(reply="malformed")
    judge = OpenAIJudge(server.url + "/v1", "m", retries=2, backoff=0.0)
    record = judge.judge(JudgeItem("Q?", "the Bo Lin", ["Bo Lin"]))  # exact match would say correct
    assert record["method"] == "llm" and record["correct"] is False
    assert record["replies"] == ["I believe this is right."] * 3 and "counted as Incorrect" in record["error"]
    assert len(server.requests) == 3


def test_a_reply_without_a_verdict_is_retried(stub):
    server = stub(reply=["malformed", "error", "correct"])
    record = OpenAIJudge(server.url, "m", retries=2, backoff=0.0).judge(ITEM)
    assert (record["method"], record["correct"], len(record["replies"])) == ("llm", True, 3)


def test_a_judge_that_answered_is_not_replaced_by_exact_match(stub):
    server = stub(reply=["error", "garbage"])
    record = OpenAIJudge(server.url, "m", retries=1, backoff=0.0).judge(JudgeItem("Q?", "Bo Lin", ["Bo Lin"]))
    assert (record["method"], record["correct"]) == ("llm", False) and "not a chat completion" in record["error"]


def test_http_errors_fall_back_to_exact_match_and_are_kept(stub):
    server = stub(reply="error")
    record = OpenAIJudge(server.url, "m", retries=1, backoff=0.0).judge(JudgeItem("Q?", "the Bo Lin", ["Bo Lin"]))
    assert record["method"] == "exact_match_fallback" and record["correct"] is True
    assert len(record["replies"]) == 2 and "503" in record["replies"][0] and "unreachable" in record["error"]


def test_judge_timeout_falls_back(stub):
    server = stub(delay=1.0)
    judge = OpenAIJudge(server.url, "m", timeout=0.2, retries=1, backoff=0.0)
    start = time.perf_counter()
    record = judge.judge(ITEM)
    assert time.perf_counter() - start < 0.9
    assert record["method"] == "exact_match_fallback" and "timed out" in record["error"]


def test_judge_concurrency_is_bounded(stub):
    server = stub(delay=0.1)
    judge = OpenAIJudge(server.url, "m", max_concurrency=2)
    items = [ITEM] * 6 + [JudgeItem("Q?", None, ["x"])]
    records = judge.judge_many(items)
    assert [r["method"] for r in records] == ["llm"] * 6 + ["no_answer"]
    assert server.max_in_flight == 2 and len(server.requests) == 6


def test_unreachable_endpoint_falls_back():
    record = OpenAIJudge("http://127.0.0.1:9", "m", timeout=0.5, retries=0).judge(ITEM)
    assert record["method"] == "exact_match_fallback" and record["replies"][0].startswith("[request failed]")


def test_an_empty_answer_is_no_answer_for_every_judge(stub):
    server = stub()
    items = [JudgeItem("Q?", "", [""]), JudgeItem("Q?", "  ", ["x"]), JudgeItem("Q?", None, ["x"])]
    for judge in (ExactMatchJudge(), OpenAIJudge(server.url, "m")):
        assert [(r["method"], r["correct"]) for r in judge.judge_many(items)] == [("no_answer", False)] * 3
    assert server.requests == []
    trajs = [traj("q", 0, None, answer=""), traj("q", 1, None, answer="x")]
    score_trajectories(trajs, ExactMatchJudge())
    assert [t.reward for t in trajs] == [0.0, 1.0] and summarize(trajs)["answered"] == 0.5


class _Out:
    def __init__(self, ids):
        self.token_ids = ids


class _Tok:
    """Encodes the reply text one character per id so the fake sampler can hand it back."""
    im_end_id, endoftext_id = 0, 1
    stop_token_ids = (0, 1)

    def encode_messages(self, messages, add_generation_prompt=False):
        assert [m["role"] for m in messages] == ["user"]
        return [ord(c) for c in messages[-1]["content"]]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


def test_local_judge_uses_the_sampler_greedily():
    replies = {"B. Lin": "<think>same</think>Correct", "Ixo": "no idea"}

    class Sampler:
        def generate(self, prompts, params):
            self.params = params
            return [_Out([ord(c) for c in replies["B. Lin" if "B. Lin" in "".join(map(chr, p)) else "Ixo"]])
                    for p in prompts]

    sampler = Sampler()
    records = LocalJudge(sampler, _Tok()).judge_many([ITEM, JudgeItem("Q?", "Ixo", ["ixo"]),
                                                      JudgeItem("Q?", None, ["x"])])
    assert sampler.params.temperature == 0.0 and sampler.params.stop_token_ids == (0, 1)
    assert [(r["method"], r["correct"]) for r in records] == [("local", True), ("local", False),
                                                              ("no_answer", False)]
    assert records[1]["replies"] == ["no idea"] and "counted as Incorrect" in records[1]["error"]


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


def test_reports_give_both_turn_counts_and_name_malformed_calls():
    bad = ToolCallRecord(1, MALFORMED_CALL, {}, error="tool call is not valid JSON")
    t = traj("q", 0, 1.0, calls=[bad])  # two assistant turns around one tool response
    t.turns = [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "b"},
               {"role": "assistant", "content": "c"}]
    t.judge = {"method": "exact_match_fallback"}
    report = summarize([t])
    per = report["per_trajectory"]
    assert "turns" not in per and per["assistant_turns"]["mean"] == 2 and per["turns_original"]["mean"] == 4
    assert list(report["tools"]) == [MALFORMED_CALL] and report["judge"] == {"exact_match_fallback": 1}
    md = report_markdown(report)
    assert "| assistant turns (model calls) | 2.0 |" in md
    assert "| turns_original (user turns after the prompt + assistant + 1; the paper's measure) | 4.0 |" in md
    assert "| (malformed) | 1 | 0.0% |" in md


def test_evaluate_sets_no_response_budget_by_default(monkeypatch):
    seen = {}

    class Recorder:
        def __init__(self, sampler, tokenizer, env, params, config):
            seen["config"] = config

        def run(self, questions, n, on_progress=None):
            return []

    monkeypatch.setattr(evaluation, "Agent", Recorder)
    evaluate(None, None, [], None, 1, params=object(), sampler=object())
    config = seen["config"]
    assert (config.mode, config.max_turns, config.max_response_tokens) == ("eval", 100, None)
