"""Rollouts reproduce the recorded ones token for token: greedy trajectories and seeded samples.

tests/data/rollout_identity.json holds fingerprints of trajectories (a hash of each one's response ids, its answer,
termination and turn count) recorded before the rollout path was optimised, so that every later change to the
sampler or the agent loop has to keep them:
- `scripted`: a small random model (fp64, so that no CPU's rounding flips a token) driven by the real sampler and
  agent loop, with a tokenizer and environment that turn its random turns into tool calls, tool results of varied
  length and answers; runs everywhere.
- `demo`: the demo's trained model on the first 50 held-out questions with the demo's evaluation settings (greedy),
  and 8 questions x 8 samples with the RL sampling settings; skipped when runs/bench_rl_demo is absent. Recorded
  with 1 thread on a 2-core AMD EPYC (AVX-512); other CPUs round fp32 differently and may legitimately differ.

    python tests/test_rollout_identity.py --record scripted   # (or demo) rewrites that part of the file
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_utils import random_model, small_config  # noqa: E402

from litere.agent import Agent, AgentConfig, AgentProcesses, WorkerPool  # noqa: E402
from litere.questions import Question  # noqa: E402
from litere.sampler import Sampler, SamplingParams  # noqa: E402

REFERENCE = Path(__file__).with_name("data") / "rollout_identity.json"
DEMO = Path(__file__).resolve().parents[1] / "runs" / "bench_rl_demo"


def fingerprints(trajectories) -> list[list]:
    """(question, sample, hash of the response ids, answer, termination, assistant turns) per trajectory."""
    return [[t.question_id, t.sample_index,
             hashlib.sha256(",".join(map(str, t.prompt_ids + [-1] + t.response_ids)).encode()).hexdigest()[:20],
             t.answer, t.termination, t.num_turns] for t in trajectories]


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the scripted world: a random model whose turns a tokenizer reads as tool calls ------------------------------
class ScriptTokenizer:
    """Ids 0..15 end a turn (many, so that a random model's greedy loops end too); text encodes byte by byte into
    ids 16..95. A turn decodes to a tool call, a malformed call or an answer chosen by a hash of its ids, so a
    random model makes multi-turn trajectories."""
    vocab_size = 96
    im_end_id, endoftext_id = 0, 1
    stop_token_ids = tuple(range(16))

    def encode(self, text: str) -> list[int]:
        return [16 + b % 80 for b in text.encode()]

    def decode(self, ids) -> str:
        digest = hashlib.sha256(bytes(i % 256 for i in ids)).hexdigest()
        kind = int(digest[0], 16)
        if kind < 2:
            return f"<think>done</think><answer>A{digest[1:5]}</answer>"
        if kind < 3:
            return '<tool_call>{"name": "search", "arguments": </tool_call>'
        if kind < 10:
            return f'<tool_call>{{"name": "search", "arguments": {{"query": ["q{digest[1:7]}"]}}}}</tool_call>'
        return (f'<tool_call>{{"name": "visit", "arguments": {{"url": ["u{digest[1:5]}"], "goal": "g"}}}}'
                "</tool_call>")

    def prompt_ids(self, question: str, system: str = "", user_prefix: str = "") -> list[int]:
        return self.encode(f"<system>{system}</system><user>{user_prefix}{question}</user><assistant>")

    def tool_response_ids(self, text: str) -> list[int]:
        return self.encode(f"<tool_response>{text}</tool_response><assistant>")


class ScriptEnv:
    """Search and visit results whose length (10 to 150 bytes) follows from the call."""

    @staticmethod
    def _text(key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return (digest * 4)[:10 + int(digest[:4], 16) % 140]

    def search(self, queries, mask_url=None):
        return self._text("search" + "|".join(queries))

    def visit(self, urls, goal):
        return self._text("visit" + "|".join(urls) + goal)


SCRIPTED_RUNS = {  # name -> (sampling parameters, samples per question)
    "greedy": (SamplingParams(temperature=0.0, seed=0), 1),
    "sampled": (SamplingParams(temperature=0.7, top_p=0.95, seed=0), 4),
}


def scripted_agent(name: str, tool_workers: int = 16) -> Agent:
    params, _ = SCRIPTED_RUNS[name]
    config = small_config(vocab_size=ScriptTokenizer.vocab_size, max_position_embeddings=4096)
    model = random_model(config, seed=3).to(torch.float64)
    tokenizer = ScriptTokenizer()
    sampler = Sampler(model, max_cache_tokens=16 * 1024, max_num_seqs=16, max_batch_tokens=512,
                      stop_token_ids=tokenizer.stop_token_ids, seed=0)
    agent_config = AgentConfig(mode="eval", max_turns=8, max_response_tokens=None, max_context_tokens=1024,
                               final_answer_tokens=24, max_concurrent=16, system_prompt="s",
                               tool_workers=tool_workers)
    return Agent(sampler, tokenizer, ScriptEnv(), params, agent_config)


SCRIPTED_QUESTIONS = [Question(f"q{i:02d}", f"question {i} " * (1 + i % 5), ["x"], "scripted") for i in range(24)]


def scripted_rollouts(name: str, tool_workers: int = 16) -> list:
    with threads(1):
        return scripted_agent(name, tool_workers).run(SCRIPTED_QUESTIONS, n=SCRIPTED_RUNS[name][1])


# --- the demo model ---------------------------------------------------------------------------------------------
DEMO_RUNS = {  # name -> (sampling parameters, questions, samples per question)
    "greedy": (dict(temperature=0.0, seed=0), 50, 1),       # the demo's evaluation
    "sampled": (dict(temperature=0.7, top_p=0.95, seed=0), 8, 8),  # the RL settings (RolloutSettings defaults)
}


FAST = dict(compile="default", in_flight=256, tool_workers=0)  # benchmarks/bench_rollout.py's "wide" settings


def demo_rollouts(name: str, compile: str | None = None, in_flight: int | None = None, tool_workers: int = 16
                  ) -> list:
    """The demo's evaluation of the first questions (its settings, unless others are given)."""
    from litere.demo import DEMO_SYSTEM_PROMPT, EVAL_AGENT
    from litere.questions import Environments, load_questions, world_env_settings
    from litere.tokenizer import Tokenizer
    from litere.weights import load_model

    sampling, n_questions, n = DEMO_RUNS[name]
    model_dir, questions_file = DEMO / "sft_final", DEMO / "world" / "eval_questions.jsonl"
    model = load_model(model_dir).eval()
    tokenizer = Tokenizer.from_dir(model_dir)
    in_flight = in_flight or EVAL_AGENT["max_concurrent"]
    sampler = Sampler(model, max_cache_tokens=EVAL_AGENT["max_concurrent"] * EVAL_AGENT["max_context_tokens"],
                      max_num_seqs=in_flight, stop_token_ids=tokenizer.stop_token_ids, seed=0, compile=compile)
    env = Environments(None, **world_env_settings(questions_file))
    params = SamplingParams(**sampling, stop_token_ids=tokenizer.stop_token_ids)
    config = AgentConfig(system_prompt=DEMO_SYSTEM_PROMPT, **{**EVAL_AGENT, "max_concurrent": in_flight},
                         tool_workers=tool_workers)
    agent = Agent(sampler, tokenizer, env, params, config)
    with threads(1):
        return agent.run(load_questions(questions_file)[:n_questions], n=n)


def _reference(part: str, name: str) -> list:
    return json.loads(REFERENCE.read_text())[part][name]


def _assert_same(got: list, want: list):
    assert len(got) == len(want)
    differing = [(g, w) for g, w in zip(got, want) if g != w]
    assert not differing, f"{len(differing)} of {len(want)} trajectories differ, e.g. {differing[:3]}"


# --- tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCRIPTED_RUNS))
def test_scripted_rollouts_match_the_recorded_ones(name):
    _assert_same(fingerprints(scripted_rollouts(name)), _reference("scripted", name))


def test_scripted_rollouts_exercise_tools_and_every_ending():
    trajectories = scripted_rollouts("sampled")
    assert sum(len(t.tool_calls) for t in trajectories) >= 2 * len(trajectories)
    assert {"answer", "context_limit"} <= {t.termination for t in trajectories}


def test_inline_tools_give_the_recorded_rollouts():
    _assert_same(fingerprints(scripted_rollouts("greedy", tool_workers=0)), _reference("scripted", "greedy"))


@pytest.mark.parametrize("name", sorted(SCRIPTED_RUNS))
def test_rollouts_across_processes_give_the_recorded_ones(name):
    """Three workers, each with its own model, sampler and a third of the questions: the trajectories of one."""
    agent = AgentProcesses(functools.partial(scripted_agent, name), processes=3)
    _assert_same(fingerprints(agent.run(SCRIPTED_QUESTIONS, n=SCRIPTED_RUNS[name][1])), _reference("scripted", name))


def test_a_kept_pool_gives_the_recorded_rollouts_run_after_run():
    """The same three workers run both scripted rollouts, one after the other, each with a new agent."""
    with WorkerPool(3) as pool:
        for name in sorted(SCRIPTED_RUNS):
            trajectories = pool.run(functools.partial(scripted_agent, name), SCRIPTED_QUESTIONS, SCRIPTED_RUNS[name][1])
            _assert_same(fingerprints(trajectories), _reference("scripted", name))


@pytest.mark.parametrize("settings", [{}, FAST], ids=["demo-settings", "compiled-wide-inline"])
@pytest.mark.parametrize("name", sorted(DEMO_RUNS))
def test_demo_rollouts_match_the_recorded_ones(name, settings):
    if not (DEMO / "sft_final" / "model.safetensors").is_file():
        pytest.skip(f"the demo model is not here ({DEMO}/sft_final; `python -m litere.demo` builds one)")
    _assert_same(fingerprints(demo_rollouts(name, **settings)), _reference("demo", name))


def record(part: str):
    data = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    runs = SCRIPTED_RUNS if part == "scripted" else DEMO_RUNS
    rollouts = scripted_rollouts if part == "scripted" else demo_rollouts
    data[part] = {name: fingerprints(rollouts(name)) for name in runs}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(_dumps(data))


def _dumps(data: dict) -> str:
    """One trajectory per line."""
    parts = {part: {name: "[\n   " + ",\n   ".join(json.dumps(f) for f in rows) + "]" for name, rows in runs.items()}
             for part, runs in data.items()}
    return "{\n" + ",\n".join(f' "{part}": {{\n' + ",\n".join(f'  "{name}": {text}' for name, text in runs.items())
                               + "}" for part, runs in parts.items()) + "\n}\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="record the reference fingerprints")
    parser.add_argument("--record", choices=("scripted", "demo"), required=True)
    record(parser.parse_args().record)
