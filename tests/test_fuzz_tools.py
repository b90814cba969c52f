"""Hostile assistant turns (seeded fuzz): the tool-call parser, execute_tool over a real page store, the agent.

Properties: no exception escapes parse_tool_call or execute_tool (a failure is the protocol's error text), the
call that runs is the first valid `<tool_call>` of the turn (docs/protocol.md section 3) and at most one runs per
turn, every text and record is valid Unicode (writable to a trajectory file), and the page store's file is
byte-identical afterwards. LITERE_FUZZ_CASES sets the cases per target (default 300; the Reliability figures in
BENCHMARKS.md come from LITERE_FUZZ_CASES=10000).
"""
import hashlib
import json
import os
import random
import re
import threading

import pytest
from test_agent import QWEN_DIR, Params, ScriptedSampler

from litere.agent import (MALFORMED_CALL, TOOL_ERROR, Agent, AgentConfig, ToolCall, execute_tool, parse_tool_call,
                          read_trajectories, write_trajectories)
from litere.env import EnvSettings, LocalEnv, PageStore
from litere.questions import Question
from litere.tokenizer import Tokenizer

CASES = int(os.environ.get("LITERE_FUZZ_CASES", "300"))
ERROR_PREFIX = TOOL_ERROR.format("")

WORDS = ["kalo", "ven", "brell", "osk", "tarn", "mira", "sol", "dun", "ake", "pell", "rho", "river", "founded",
         "1907", "Zürich", "été", "中文"]
URLS = [f"https://fuzz.example/{i}" for i in range(120)]
FTS5_SQL = ['"', "'", '""', "''", "NEAR(kalo ven, 2)", "kalo AND ven", "OR", "NOT", "AND", "*", "kal*", "^kalo",
            "title:kalo", "{title text}: ven", "(", ")", "-", "+", ":", "'; DROP TABLE pages; --",
            '" OR 1=1 --', "1; DELETE FROM pages", "x'); INSERT INTO pages(url, title, text) VALUES('u','t','x'); --",
            "%", "_", "\\", "pages_fts MATCH 'a'", "rank", "bm25(pages_fts)", "ATTACH DATABASE '/tmp/x' AS y",
            "PRAGMA writable_schema=1", "UPDATE terms SET df=0", "\" MATCH \"", "NEAR(", "col:*", "rowid"]
FORGED = ["<|im_end|>", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|endoftext|>", "<tool_response>",
          "</tool_response>", "<tool_call>", "</tool_call>", "<answer>", "</answer>", "<think>", "</think>",
          "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": [\"forged\"]}}\n</tool_call>"]
ODD = ["\x00", "\ud800", "\udfff", "\udc00\ud800", "\ud83d\ude00", "😀", "é", "ß", "ǅ", "\u0301", "\u200b",
       "\ufeff", "\u202e", "中文字", "\U0001d518", "\r\n", "\t", "\x7f", "\x1b[2J", "\\", "\\\\", "\\u0000",
       "\\ud800", "\\udfff\\ud800", "\\ud83d\\ude00", "\uffff", "\U0010ffff"]
SURROGATE = re.compile("[\ud800-\udfff]")


# --- the world ------------------------------------------------------------------------------------------------
def build_store(path) -> None:
    """120 pages whose titles and texts draw on WORDS, with SQL-looking and non-ASCII text in some of them."""
    rng = random.Random(0)
    rows = []
    for i, url in enumerate(URLS):
        title = " ".join(rng.sample(WORDS, 2)) + f" {i}"
        text = " ".join(" ".join(rng.choices(WORDS, k=8)).capitalize() + "." for _ in range(6))
        rows.append((url, title, text + " " + rng.choice(FTS5_SQL + ["Ünïcödé text.", "中文 文本。"])))
    with PageStore(path) as store:
        store.add_pages(rows)


def file_digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "world.db"
    build_store(path)
    return path


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(QWEN_DIR)


class CountingEnv:
    """A LocalEnv that counts the calls that reach it."""

    def __init__(self, env):
        self.env, self.calls = env, 0
        self._lock = threading.Lock()

    def _count(self):
        with self._lock:
            self.calls += 1

    def search(self, queries, mask_url=None):
        self._count()
        return self.env.search(queries, mask_url=mask_url)

    def visit(self, urls, goal):
        self._count()
        return self.env.visit(urls, goal)


# --- hostile text ---------------------------------------------------------------------------------------------
def hostile_text(rng: random.Random, *, literal_surrogates: bool = True, huge: float = 0.01) -> str:
    """Words of the store mixed with FTS5 syntax, SQL, forged chat markup, odd code points and JSON escapes;
    now and then a huge string."""
    pieces = []
    for _ in range(rng.randint(0, 8)):
        r = rng.random()
        if r < 0.25:
            pieces.append(rng.choice(FTS5_SQL))
        elif r < 0.4:
            pieces.append(rng.choice(FORGED))
        elif r < 0.55:
            pieces.append(rng.choice(ODD))
        elif r < 0.75:
            pieces.append(rng.choice(WORDS))
        elif r < 0.9:
            pieces.append("".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(1, 12))))
        else:   # any code point, surrogates included
            pieces.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 6))))
    text = rng.choice([" ", "", "\n"]).join(pieces)
    if rng.random() < huge:
        text += rng.choice(WORDS + [" x", "\\u00e9", "{", "[\"", "\x00"]) * rng.randint(10_000, 100_000)
    return text if literal_surrogates else SURROGATE.sub("?", text)


def small(kw: dict) -> dict:
    return {**kw, "huge": 0}


def hostile_value(rng: random.Random, depth: int = 0, **kw):
    r = rng.random()
    if r < 0.45:
        return hostile_text(rng, **kw)
    if r < 0.7:
        return [hostile_text(rng, **kw) for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))]
    if r < 0.8 and depth < 3:
        return {hostile_text(rng, **small(kw))[:20]: hostile_value(rng, depth + 1, **kw)
                for _ in range(rng.randint(0, 3))}
    return rng.choice([None, True, False, 0, -1, 1.5, 10 ** 30, [], {}, [1, "kalo"], [["kalo"]], float("nan"),
                       float("inf"), ["kalo", None], [""], ""])


def call_body(rng: random.Random, **kw) -> str:
    """The text between <tool_call> and </tool_call>: a call that is well formed, of the wrong shape, or broken."""
    name = rng.choice(["search", "search", "visit", "visit", "Search", "browse", "", hostile_text(rng, **small(kw))])
    arguments = {}
    if rng.random() < 0.9:
        arguments["query"] = rng.choice([hostile_value(rng, **kw), [rng.choice(WORDS)], rng.choice(WORDS)])
    if rng.random() < 0.6:
        arguments["url"] = rng.choice([hostile_value(rng, **kw), rng.choice(URLS), rng.sample(URLS, 2),
                                       " " + rng.choice(URLS) + "\n"])
    if rng.random() < 0.6:
        arguments["goal"] = rng.choice([hostile_value(rng, **kw), "when was it founded"])
    if rng.random() < 0.1:
        arguments[hostile_text(rng, **small(kw))] = hostile_value(rng, **kw)
    obj = {"name": name, "arguments": arguments}
    r = rng.random()
    if r < 0.1:
        obj["arguments"] = json.dumps(arguments)                       # double-encoded arguments
    elif r < 0.15:
        obj["arguments"] = json.dumps(arguments)[: rng.randint(0, 20)]  # ... and broken
    elif r < 0.2:
        obj = rng.choice([[obj], {"arguments": arguments}, {"name": 3, "arguments": arguments},
                          {"name": name, "arguments": [arguments]}, {"name": name}, None, "search"])
    elif r < 0.23:   # nesting past any parser's recursion limit, or just deep
        depth = rng.choice([50, 5_000, 100_000])
        return '{"name": "search", "arguments": {"query": ' + "[" * depth + '"kalo"' + "]" * depth + "}}"
    elif r < 0.25:
        return rng.choice(["[", "{"]) * rng.choice([1_000, 100_000])
    elif r < 0.28:   # integers past the 4,300-digit conversion limit, in the call or in double-encoded arguments
        digits = "9" * rng.randint(4_301, 20_000)
        return rng.choice(['{"name": "search", "arguments": {"query": "kalo", "limit": ' + digits + "}}",
                           '{"name": "search", "arguments": "{\\"query\\": ' + digits + '}"}', digits])
    body = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    for _ in range(rng.choice([0, 0, 0, 1, 2])):   # break it
        i = rng.randint(0, len(body))
        m = rng.random()
        if m < 0.3:
            body = body[:i]
        elif m < 0.6:
            body = body[:i] + body[i + 1:]
        else:
            body = body[:i] + rng.choice(["{", "}", '"', "]", ",", "\\", "</tool_call>", "'", ":", "\x00"]) + body[i:]
    if rng.random() < 0.05:
        body = body.replace('"', "'")
    return body


def hostile_turn(rng: random.Random, **kw) -> str:
    """Thinking, then zero to five calls (several in one turn), junk between them, forged markup anywhere."""
    parts = []
    if rng.random() < 0.7:
        parts.append(hostile_text(rng, **kw) + "\n</think>\n\n")
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3, 5])):
        parts.append(rng.choice(["", "\n", " junk ", hostile_text(rng, **small(kw))]))
        close = "</tool_call>" if rng.random() < 0.93 else rng.choice(["", "</tool_call", "</TOOL_CALL>"])
        parts.append("<tool_call>" + rng.choice(["", "\n"]) + call_body(rng, **kw) + rng.choice(["", "\n"]) + close)
    if rng.random() < 0.1:
        parts.append(rng.choice(FORGED) + hostile_text(rng, **small(kw)))
    return "".join(parts)


# --- the protocol, read literally -----------------------------------------------------------------------------
def replace_surrogates(obj):
    if isinstance(obj, str):
        return SURROGATE.sub("\ufffd", obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(replace_surrogates(v) for v in obj)
    if isinstance(obj, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in obj.items()}
    return obj


def reference_call(text: str):
    """docs/protocol.md section 3: the first body that parses as a JSON object with a string name and an object
    arguments (arguments given as a JSON string decoded once). Anything the JSON reader refuses is not a call."""
    for body in re.findall(r"<tool_call>(.*?)</tool_call>", text, re.DOTALL):
        try:
            obj = json.loads(body)
        except Exception:
            continue
        if not isinstance(obj, dict):
            continue
        arguments = obj.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except Exception:
                pass
        if isinstance(obj.get("name"), str) and isinstance(arguments, dict):
            return obj["name"], arguments
    return None


def valid_unicode(obj) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return True
    except (UnicodeEncodeError, RecursionError):
        return False


def check_parse(text: str):
    call, problem = parse_tool_call(text)
    expected = reference_call(text)
    assert (call is None) == (expected is None)
    if call is None:
        assert problem is None if "<tool_call>" not in text else isinstance(problem, str) and problem
        return None
    assert problem is None and isinstance(call.name, str) and isinstance(call.arguments, dict)
    assert valid_unicode([call.name, call.arguments])
    name, arguments = replace_surrogates(expected)
    assert call.name == name
    assert json.dumps(call.arguments) == json.dumps(arguments)   # NaN-safe comparison
    return call


def check_execute(env: CountingEnv, call: ToolCall, mask_url=None):
    before = env.calls
    text, success, error, latency = execute_tool(env, call, mask_url)
    assert env.calls - before <= 1
    assert isinstance(text, str) and valid_unicode(text) and latency >= 0
    if success:
        assert error is None and call.name in ("search", "visit") and env.calls == before + 1
        assert text.startswith("A Google search for '" if call.name == "search" else "The useful information in ")
    else:
        assert text.startswith(ERROR_PREFIX) and isinstance(error, str) and valid_unicode(error)
    return success


# --- tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,why", [
    ("<tool_call>" + "[" * 100_000 + "</tool_call>", "nested too deeply"),
    ('<tool_call>{"name": "search", "arguments": {"query": ' + "[" * 5_000 + '"x"' + "]" * 5_000 + "}}</tool_call>",
     "nested too deeply"),
    ("<tool_call>" + "1" * 5_000 + "</tool_call>", "not valid JSON"),
    ('<tool_call>{"name": "search", "arguments": {"query": "x", "n": ' + "9" * 5_000 + "}}</tool_call>",
     "not valid JSON"),
])
def test_json_the_reader_refuses_is_a_malformed_call(text, why):
    call, problem = parse_tool_call(text)
    assert call is None and why in problem
    call, problem = parse_tool_call(text + '<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>')
    assert (call, problem) == (ToolCall("search", {"query": "x"}), None)


def test_double_encoded_arguments_with_a_huge_integer_are_not_decoded():
    text = '<tool_call>{"name": "search", "arguments": "{\\"query\\": ' + "9" * 5_000 + '}"}</tool_call>'
    call, problem = parse_tool_call(text)
    assert call is None and "object" in problem


def test_lone_surrogates_in_a_call_become_replacement_characters(fuzz_db, tok):
    text = ('<tool_call>{"name": "search", "arguments": {"query": ["kalo \\ud800", "\\udfff"], '
            '"\\ud83d": "\\ud83d\\ude00"}}</tool_call>')
    call, _ = parse_tool_call(text)
    assert call == ToolCall("search", {"query": ["kalo \ufffd", "\ufffd"], "\ufffd": "😀"})
    env = LocalEnv(PageStore(fuzz_db, readonly=True), EnvSettings.compact())
    out, success, _, _ = execute_tool(env, call, None)
    assert success and "'kalo \ufffd'" in out and tok.tool_response_ids(out)   # the tokenizer takes it
    # a call made some other way is answered with valid Unicode too
    out, success, error, _ = execute_tool(env, ToolCall("search", {"query": "kalo \ud800"}), None)
    assert success and "'kalo \ufffd'" in out
    out, success, error, _ = execute_tool(env, ToolCall("visit", {"url": "\udc00", "goal": "g"}), None)
    assert success and valid_unicode(out) and "could not be accessed" in out
    out, success, error, _ = execute_tool(env, ToolCall("\ud800", {}), None)
    assert not success and valid_unicode([out, error])
    env.close()


def test_parser_and_environment_under_hostile_turns(fuzz_db):
    digest = file_digest(fuzz_db)
    env = CountingEnv(LocalEnv(PageStore(fuzz_db), EnvSettings.compact()))   # writable: nothing may write anyway
    rng = random.Random(1234)
    outcomes = {"turns": 0, "calls": 0, "ran": 0, "direct": 0}
    for case in range(CASES):
        text = hostile_turn(rng)
        call = check_parse(text)
        outcomes["turns"] += 1
        if call is not None:
            outcomes["calls"] += 1
            outcomes["ran"] += check_execute(env, call, rng.choice([None, "fuzz.example/1", "\ud800"]))
        # and a call made directly, with arguments no JSON reader would give
        direct = ToolCall(rng.choice(["search", "visit", "", "\ud800", hostile_text(rng, huge=0)]),
                          rng.choice([hostile_value(rng), {"query": hostile_value(rng)},
                                      {"url": hostile_value(rng), "goal": hostile_value(rng)}, {"query": b"kalo"},
                                      {"query": object()}, {"url": ["a", 3], "goal": "g"}, None, []]))
        check_execute(env, direct)
        outcomes["direct"] += 1
    env.env.close()
    assert not [p for p in fuzz_db.parent.iterdir() if p.name.startswith(fuzz_db.name + "-")]  # no journal left
    assert file_digest(fuzz_db) == digest
    assert outcomes["calls"] > CASES // 4 and outcomes["ran"] > CASES // 20, outcomes   # the fuzz reaches the env
    print(f"fuzz tools: {outcomes}")


def test_agent_runs_hostile_turns_one_call_per_turn(fuzz_db, tok, tmp_path):
    """A few hundred hostile turns through the whole ReAct loop (scripted policy, threaded and inline tools)."""
    digest = file_digest(fuzz_db)
    rng = random.Random(99)
    n_questions = max(8, min(CASES, 1200) // 6)   # a few hundred turns by default, at most ~1,200
    questions = [Question(f"q{i}", f"fuzz question {i}", ["kalo"], "fuzz", rng.choice([None, "fuzz.example/3"]))
                 for i in range(n_questions)]
    scripts = {}
    for q in questions:   # a model's text comes from decoding tokens: it never holds a lone surrogate
        scripts[q.question] = [hostile_turn(rng, literal_surrogates=False, huge=0.002) for _ in range(8)]
    policy = lambda question, turn, context: scripts[question][turn % 8]   # noqa: E731
    store = PageStore(fuzz_db)
    env = CountingEnv(LocalEnv(store, EnvSettings.compact()))
    trajectories = []
    for mode, workers in (("eval", 4), ("train", 0)):
        sampler = ScriptedSampler(tok, policy, chunk=64)
        config = AgentConfig(mode=mode, max_turns=8, max_response_tokens=30_000, tool_workers=workers)
        trajectories += Agent(sampler, tok, env, Params(), config).run(questions)
        assert not sampler.requests
    store.close()
    turns = records = 0
    for t in trajectories:
        assert t.termination != "error", (t.question_id, t.error)
        assistant = [turn["content"] for turn in t.turns if turn["role"] == "assistant"]
        assert len({r.turn for r in t.tool_calls}) == len(t.tool_calls)   # at most one call per turn
        for record in t.tool_calls:
            call, problem = parse_tool_call(assistant[record.turn - 1])
            if record.name == MALFORMED_CALL:
                assert call is None and record.error == problem
            else:
                assert record.name == call.name and json.dumps(record.arguments) == json.dumps(call.arguments)
        turns += len(assistant)
        records += len(t.tool_calls)
    ran = sum(r.success for t in trajectories for r in t.tool_calls)
    assert ran <= env.calls <= sum(r.name != MALFORMED_CALL for t in trajectories for r in t.tool_calls)
    assert turns >= 2 * n_questions and ran > 0
    write_trajectories(trajectories, tmp_path / "t.jsonl")   # every text and record is writable ...
    back = read_trajectories(tmp_path / "t.jsonl")   # ... and reads back the same (NaN-safe comparison)
    for b, t in zip(back, trajectories, strict=True):
        assert (b.response_ids, b.turns, b.termination) == (t.response_ids, t.turns, t.termination)
        assert json.dumps([vars(r) for r in b.tool_calls]) == json.dumps([vars(r) for r in t.tool_calls])
    assert file_digest(fuzz_db) == digest
    print(f"fuzz agent: {turns} turns, {records} tool records, {env.calls} env calls, {ran} succeeded")
