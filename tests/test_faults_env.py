"""Faults injected into the LLM summariser and the HTTP environment (docs/protocol.md section 3): a service down,
hanging, trickling, answering 500 / 429 / 400 / garbage / huge / non-UTF-8. A failed summary is the protocol's
miss text, counted; a tool call that cannot be served is the protocol's error text, recorded as a failed call
and counted, within a per-call deadline; an agent run against a service that never answers finishes in time."""
import json
import random

import pytest

from litere.agent import TOOL_ERROR, Agent, AgentConfig, ToolCall, execute_tool
from litere.env import EnvSettings, HttpEnv, LLMSummarizer, LocalEnv, PageStore, format_visit, visit_miss
from litere.evaluation import summarize
from litere.questions import Question
from litere.reward import ExactMatchJudge, score_trajectories
from fault_server import closed_port_url, completion, fuzz_replies, timed

PAGE = "Osk is a country. The capital of Osk is Brell. The currency of Osk is the Vob."
GOAL = "Find the capital of Osk"
GOOD = '{"rational": "r", "evidence": "The capital of Osk is Brell.", "summary": "Brell is the capital."}'


# --- the LLM summariser ---------------------------------------------------------------------------------------
@pytest.fixture
def store():
    s = PageStore(":memory:")
    s.add_pages([("u", "Osk", PAGE)])
    yield s
    s.close()


def summarised_visit(store, url, **kw):
    """(visit text, summariser, seconds) for one visit of page "u" through an LLM summariser at `url`."""
    summariser = LLMSummarizer(url, "m", **{"retry_delay": 0.01, **kw})
    env = LocalEnv(store, EnvSettings(), summarizer=summariser)
    text, seconds = timed(env.visit, "u", GOAL)
    return text, summariser, seconds


SUMMARY_FAULTS = {  # fault -> (behaviours, tries it should take)
    "500": ([("status", 500)], 3),
    "401": ([("status", 401)], 1),  # the request is wrong: not retried
    "reset": (["reset"], 3),
    "badstatus": (["badstatus"], 3),
    "not JSON": ([("raw", b"<html>oops</html>")], 3),
    "no JSON in the reply": ([("ok", "I could not read the page.")], 3),
    "empty evidence": ([("ok", '{"evidence": "", "summary": "s"}')], 3),
    "content not text": ([("raw", completion({"evidence": "e"}))], 3),
    "huge": ([("raw", completion("x" * 300_000))], 3),
    "not UTF-8": ([("raw", b"\xff\xfe\x00garbage")], 3),
    "nested": ([("ok", '{"evidence": ' * 5000 + '}')], 3),
}


@pytest.mark.parametrize("name", sorted(SUMMARY_FAULTS))
def test_a_failed_summary_is_the_miss_text_and_counted(fault, store, name):
    behaviours, tries = SUMMARY_FAULTS[name]
    server = fault(*behaviours)
    text, summariser, seconds = summarised_visit(store, server.url, retries=2, max_reply_bytes=256 << 10)
    assert text == visit_miss("u", GOAL) and summariser.failures == 1
    assert server.requests == tries and seconds < 2.0


def test_summariser_down_hanging_or_trickling_is_bounded_in_time(fault, store):
    text, summariser, seconds = summarised_visit(store, closed_port_url(), retries=2, timeout=1.0)
    assert text == visit_miss("u", GOAL) and summariser.failures == 1 and seconds < 0.5
    for behaviour in ("hang", "trickle"):
        server = fault(behaviour)
        text, summariser, seconds = summarised_visit(store, server.url, retries=1, timeout=0.3)
        assert text == visit_miss("u", GOAL) and summariser.failures == 1
        assert server.requests == 2 and seconds < 2 * 0.3 + 0.01 + 0.5, behaviour


def test_summariser_retries_back_off_and_honour_retry_after(fault, store):
    server = fault(("status", 503), ("status", 429, {"Retry-After": "0.3"}), ("ok", GOOD))
    text, summariser, _ = summarised_visit(store, server.url, retries=2, retry_delay=0.1)
    assert text == format_visit("u", GOAL, "The capital of Osk is Brell.", "Brell is the capital.")
    first, second = server.gaps()
    assert 0.1 <= first < 0.25 and 0.3 <= second < 0.45 and summariser.failures == 0
    server = fault(("status", 429, {"Retry-After": "3600"}), ("ok", GOOD))
    _, _, seconds = summarised_visit(store, server.url, retries=1, max_retry_delay=0.2)
    assert 0.2 <= server.gaps()[0] < 0.35 and seconds < 1.0  # an hour, capped


def test_summariser_reply_fuzz(fault, store):
    """Fuzzed completions: a visit gives a summary or the miss text (counted), never an exception."""
    rng = random.Random(2)
    keys = ["evidence", "summary", "rational", "Evidence", ""]
    bodies = []
    for i, (reply, _) in enumerate(fuzz_replies(seed=3, n=200)):
        if i % 3 == 0:  # a JSON object with random keys and values
            obj = {rng.choice(keys): rng.choice([reply, [reply, 1], None, 3, {"a": reply}]) for _ in range(3)}
            bodies.append(completion(json.dumps(obj)))
        elif i % 3 == 1:
            bodies.append(completion(reply))
        else:
            bodies.append(reply.encode("utf-8", "surrogatepass")[:100_000])
    server = fault(*[("raw", b) for b in bodies])
    summariser = LLMSummarizer(server.url, "m", retries=0, max_reply_bytes=256 << 10)
    env = LocalEnv(store, EnvSettings(), summarizer=summariser)
    misses = 0
    for _ in bodies:
        text = env.visit("u", GOAL)
        text.encode("utf-8")
        assert text.startswith(f"The useful information in u for user goal {GOAL} as follows: \n\n")
        misses += text == visit_miss("u", GOAL)
    assert server.requests == len(bodies) and summariser.failures == misses and 100 <= misses < len(bodies)
    print(f"summariser fuzz: {len(bodies)} replies, {len(bodies) - misses} summaries, {misses} miss texts")


# --- the HTTP environment -------------------------------------------------------------------------------------
SEARCH = ToolCall("search", {"query": ["capital of Osk"]})
VISIT = ToolCall("visit", {"url": ["u"], "goal": GOAL})
HITS = {"query_results": [{"query": "capital of Osk", "results": [
    {"link": "u", "title": "Osk", "snippet": "The capital of Osk is Brell.", "score": 1.0}]}]}


def http_env(url, **kw):
    return HttpEnv(url, url, EnvSettings(), **{"timeout": 1.0, "retries": 2, "retry_delay": 0.01, **kw})


def check_failed(result, *fragments):
    text, success, error, latency = result
    assert not success and text == TOOL_ERROR.format(text[len(TOOL_ERROR.format("")):]), text
    for fragment in fragments:
        assert fragment in error, error
    return latency


ENV_FAULTS = {  # fault -> (behaviours, requests per call, words of the error)
    "500": ([("status", 500)], 3, "HTTPError"),
    "429 for ever": ([("status", 429, {"Retry-After": "0.05"})], 3, "429"),
    "400": ([("status", 400)], 1, "answered 400"),  # the request is wrong: not retried
    "reset": (["reset"], 3, "failed after 3 attempts"),
    "badstatus": (["badstatus"], 3, "failed after 3 attempts"),
    "not JSON": ([("raw", b"<html>502</html>")], 3, "JSONDecodeError"),
    "not UTF-8": ([("raw", b"\xff\xfe\xfd")], 3, "JSONDecodeError"),
    "huge": ([("raw", b" " * 300_000)], 3, "ReplyTooLarge"),
    "a JSON list": ([("json", [1, 2])], 3, "not a JSON object"),
    "nested": ([("raw", b"[" * 100_000)], 3, "nested too deeply"),
}


@pytest.mark.parametrize("tool", [SEARCH, VISIT], ids=["search", "visit"])
@pytest.mark.parametrize("name", sorted(ENV_FAULTS))
def test_a_tool_call_that_cannot_be_served_is_the_error_text(fault, name, tool):
    behaviours, requests, words = ENV_FAULTS[name]
    server = fault(*behaviours)
    latency = check_failed(execute_tool(http_env(server.url, max_reply_bytes=256 << 10), tool, None), words)
    assert server.requests == requests and latency < 1.0


@pytest.mark.parametrize("reply,words", [
    ({"query_results": "none"}, "without one query_results entry per query"),
    ({"query_results": []}, "without one query_results entry per query"),
    ({"query_results": [{"results": "x"}]}, "without a results list"),
    ({"query_results": [{"results": [{"link": "u", "score": "high"}]}]}, "not a search hit"),
])
def test_search_replies_of_the_wrong_layout_are_tool_errors(fault, reply, words):
    server = fault(("json", reply))
    check_failed(execute_tool(http_env(server.url), SEARCH, None), words)
    assert server.requests == 1


def test_tool_calls_recover_after_transient_faults(fault):
    server = fault(("status", 503), ("status", 429, {"Retry-After": "0.2"}), ("json", HITS))
    text, success, _, latency = execute_tool(http_env(server.url), SEARCH, None)
    assert success and text.startswith("A Google search for 'capital of Osk' found 1 results:")
    assert 0.01 <= server.gaps()[0] < 0.15 and 0.2 <= server.gaps()[1] < 0.35
    server = fault("reset", ("json", {"success": True, "result": "The page says Brell."}))
    assert execute_tool(http_env(server.url), VISIT, None)[:2] == ("The page says Brell.", True)


@pytest.mark.parametrize("behaviour", ["hang", "trickle"])
def test_each_tool_call_has_a_deadline(fault, behaviour):
    server = fault(behaviour)
    env = http_env(server.url, timeout=0.3, retries=10, deadline=0.8)
    for tool in (SEARCH, VISIT):
        latency = check_failed(execute_tool(env, tool, None), "TimeoutError" if behaviour == "hang" else "in time")
        assert latency < 0.8 + 0.3
    assert server.requests <= 2 * 3  # ~0.3 s a try: three fit in the deadline of each call


def test_a_service_that_is_down_fails_fast():
    env = http_env(closed_port_url(), retries=2)
    for tool in (SEARCH, VISIT):
        assert check_failed(execute_tool(env, tool, None), "failed after 3 attempts", "refused") < 0.5
    env = HttpEnv(closed_port_url(), None, timeout=1.0)  # sizes from /health, which is down too
    check_failed(execute_tool(env, SEARCH, None), "/health failed")


def test_lone_surrogates_from_a_service_become_writable_text(fault):
    reply = json.dumps({"success": True, "result": "Brell \ud800 is the capital"}).encode()
    server = fault(("raw", reply))
    text, success, _, _ = execute_tool(http_env(server.url), VISIT, None)
    assert success and text == "Brell \ufffd is the capital"


# --- an agent over a service that never answers ---------------------------------------------------------------
def test_an_agent_over_a_hanging_service_finishes_and_counts_the_failures(fault):
    """Four trajectories of three searches each against a service that never answers: every call ends at its
    deadline with the error text, the run finishes in bounded time, and the failures are counted."""
    from test_agent import QWEN_DIR, Params, ScriptedSampler

    from litere.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(QWEN_DIR)
    call = '<tool_call>\n{"name": "search", "arguments": {"query": ["capital of Osk"]}}\n</tool_call>'

    def policy(question, turn, context):
        return f"<think>\nturn {turn}\n</think>\n\n" + (call if turn < 3 else "<answer>Brell</answer>")

    server = fault("hang")
    env = http_env(server.url, timeout=0.25, retries=1, retry_delay=0.05)
    agent = Agent(ScriptedSampler(tok, policy), tok, env, Params(), AgentConfig(tool_workers=4))
    questions = [Question(f"q{i}", "What is the capital of Osk?", ["Brell"]) for i in range(4)]
    trajectories, seconds = timed(lambda: agent.run(questions, n=1))
    assert [t.termination for t in trajectories] == ["answer"] * 4
    calls = [c for t in trajectories for c in t.tool_calls]
    assert len(calls) == 12 and not any(c.success for c in calls)
    assert all("timed out" in c.error and c.latency_s < 0.25 * 2 + 0.05 + 0.2 for c in calls)
    assert all(turn["content"].startswith("Error when executing tool: ") for t in trajectories
               for turn in t.turns if turn["role"] == "tool")
    assert agent.stats.tool_errors == {"search": 12} and "12 tool errors" in agent.stats.line()
    assert seconds < 3 * (0.25 * 2 + 0.05) + 2.0  # three rounds of four parallel calls, each at its deadline
    report = summarize(score_trajectories(trajectories, ExactMatchJudge()))
    assert report["tools"]["search"]["failed"] == 12 and report["avg@k"] == 1.0
    print(f"agent over a hanging service: 12 calls failed at their deadline, run took {seconds:.2f}s")
