"""The ReAct agent (docs/protocol.md sections 2, 3 and 7) over the continuous-batching sampler.

Every running trajectory decodes in the same sampler. A turn that ends in a tool call pauses its request (it keeps
its KV cache); the call runs in a thread pool while the other trajectories keep decoding, and its result is appended
token-in/token-out with `sampler.extend`. A tool whose calls have taken less than `inline_tool_seconds` on average
(the embedded page store answers in well under a millisecond) runs inline instead, as every tool does with
`tool_workers=0`: a hand-off to the pool would cost more than the call and delay its result by a step. History is
never re-tokenized, so the ids of a trajectory are exactly what the model saw.

A turn answers when the text after its first `</think>` (the whole turn if it has none) holds both `<answer>` and
`</answer>`. Training mode ends an episode at the first turn with neither a parsable tool call nor an answer.
Evaluation mode answers a malformed call with the tool error text, and at the context limit tells the model to stop
calling tools and answer, then calls it once more.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..questions import Question
from ..reward import ANSWER_RE, extract_answer
from ..tokenizer import GENERATION_PROMPT, SYSTEM_PROMPT, USER_PREFIX
from .tools import MALFORMED_CALL, TOOL_ERROR, execute_tool, parse_tool_call
from .trajectory import SAMPLING_FIELDS, ToolCallRecord, Trajectory

TERMINATIONS = ("answer", "no_tool_call", "max_turns", "budget", "context_limit", "error")
CONTEXT_LIMIT_REMINDER = (  # the original's wording (docs/protocol.md section 7)
    "You have now reached the maximum context length. Stop making tool calls and provide your best answer in this "
    "format: <think>your final thinking</think>\n<answer>your answer</answer>")


def turn_answers(text: str) -> bool:
    """Whether an assistant turn ends the episode with an answer: the text after its first `</think>` (the whole
    turn when it has none) holds both `<answer>` and `</answer>`. An answer tag inside the thinking does not count."""
    _, think_end, after = text.partition("</think>")
    tail = after if think_end else text
    return "<answer>" in tail and "</answer>" in tail


def sampled_answer(turns: list[dict]) -> str | None:
    """The trajectory's answer: the last `<answer>…</answer>` of the last assistant turn that holds one (None if it
    is empty). Only sampled text counts: forced segments (tool texts, the reminder's `<answer>your answer</answer>`)
    never do, and no match spans two turns."""
    for turn in reversed(turns):
        if turn["role"] == "assistant" and ANSWER_RE.search(turn["content"]):
            return extract_answer(turn["content"])
    return None


def question_seed(seed: int, question_id: str) -> int:
    """A question's own 63-bit base seed, derived from the run's seed and the question id (stable across runs and
    processes): sample i of the question is seeded base + i, so no two questions share random numbers."""
    digest = hashlib.blake2b(f"{seed}:{question_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class AgentConfig:
    mode: str = "train"  # "train" | "eval"
    max_turns: int = 40  # assistant turns per trajectory
    max_response_tokens: int | None = 32768  # sampled + forced tokens after the prompt (None: no own limit)
    max_context_tokens: int | None = None  # prompt + response
    final_answer_tokens: int = 2048  # eval: context kept free for the reminder's final answer
    reminder: str = CONTEXT_LIMIT_REMINDER
    tool_workers: int = 16  # 0: run tool calls inline, in order (deterministic; no threads)
    inline_tool_seconds: float = 0.002  # a tool whose calls took less on average runs inline (0: never)
    max_concurrent: int | None = None  # trajectories in flight at once (None: every one)
    system_prompt: str = SYSTEM_PROMPT
    user_prefix: str = USER_PREFIX

    def __post_init__(self):
        if self.mode not in ("train", "eval"):
            raise ValueError(f"AgentConfig.mode must be 'train' or 'eval', got {self.mode!r}")
        for name in ("max_turns", "max_response_tokens", "final_answer_tokens", "max_context_tokens", "max_concurrent"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"AgentConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.tool_workers < 0:
            raise ValueError(f"AgentConfig.tool_workers must be >= 0 (0: inline), got {self.tool_workers}")
        if not self.inline_tool_seconds >= 0:
            raise ValueError(f"AgentConfig.inline_tool_seconds must be >= 0, got {self.inline_tool_seconds}")


@dataclass
class RolloutStats:
    total: int
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    tool_calls: int = 0
    sampled_tokens: int = 0
    tools_in_flight: int = 0
    tool_errors: dict = field(default_factory=dict)  # tool name -> calls answered with the error text

    def line(self) -> str:
        dt = max(1e-9, time.perf_counter() - self.started)
        errors = sum(self.tool_errors.values())
        return (f"{self.done}/{self.total} trajectories | {self.tool_calls / dt:.1f} tool calls/s | "
                f"{self.sampled_tokens / dt:.0f} tok/s | {self.tools_in_flight} tools running | "
                + (f"{errors} tool errors | " if errors else "") + f"{dt:.0f}s")


class ToolLatency:
    """A moving average of each tool's call latency, which decides whether its next call runs inline: a call
    cheaper than handing it to a thread is cheaper still done at once. A tool with no call measured yet, or one
    that slows down (an HTTP service), goes to the pool."""

    def __init__(self, inline_below: float, weight: float = 0.25):
        self.inline_below, self.weight = inline_below, weight
        self.average: dict[str, float] = {}

    def observe(self, tool: str, seconds: float):
        previous = self.average.get(tool, seconds)
        self.average[tool] = previous + self.weight * (seconds - previous)

    def inline(self, tool: str) -> bool:
        return self.average.get(tool, math.inf) < self.inline_below


@dataclass
class _Episode:
    traj: Trajectory
    question: Question
    env: object
    params: object  # the question's sampling parameters (its own seed)
    rid: int | None = None
    final_call: bool = False
    started: float = field(default_factory=time.perf_counter)


class Agent:
    """Runs questions × n samples to completion. `env` is an environment (search/visit) or a callable
    `question -> environment`; `params` are the sampling parameters (max_new_tokens is set per turn; a seed is the
    run's seed, from which each question derives its own). Turns stop on <|im_end|> or <|endoftext|> unless
    `params.stop_token_ids` says otherwise."""

    def __init__(self, sampler, tokenizer, env, params, config: AgentConfig | None = None):
        self.sampler, self.tokenizer = sampler, tokenizer
        self.config = c = config or AgentConfig()
        if params.stop_token_ids is None:
            params = dataclasses.replace(params, stop_token_ids=tokenizer.stop_token_ids)
        self.params = params
        self.env_for = env if callable(env) and not hasattr(env, "search") else (lambda question: env)
        # the sampler's own per-sequence limit (positions, cache) bounds the context too
        limits = [x for x in (c.max_context_tokens, getattr(sampler, "max_seq_len", None)) if x is not None]
        self.max_context = min(limits) if limits else None
        if self.max_context is None and c.max_response_tokens is None:
            raise ValueError("Agent: set AgentConfig.max_response_tokens or max_context_tokens (the sampler has no "
                             "max_seq_len either), or turns could never be bounded")
        self._reminder_ids = tokenizer.encode(f"\n<|im_start|>user\n{c.reminder}<|im_end|>\n{GENERATION_PROMPT}")
        # eval mode keeps room for closing a cut turn, the reminder and the final answer
        self._reserve = 1 + len(self._reminder_ids) + c.final_answer_tokens if c.mode == "eval" else 0

    def run(self, questions: list[Question], n: int = 1, *, policy_version: int | None = None, on_trajectory=None,
            on_progress=None, progress_interval: float = 1.0) -> list[Trajectory]:
        """All trajectories, ordered by question then sample index. `policy_version` (the training step whose
        weights sample) goes into every record. `on_trajectory(traj)` is called as each one ends; `on_progress(stats)`
        at most every `progress_interval` seconds and once at the end."""
        self.stats = RolloutStats(total=len(questions) * n)
        self._policy_version = policy_version
        self._running: dict[int, _Episode] = {}
        self._tools: dict[Future, tuple[_Episode, ToolCallRecord]] = {}
        self._done: list[Trajectory] = []
        self._on_trajectory = on_trajectory
        self._latency = ToolLatency(self.config.inline_tool_seconds)
        pending = deque(questions)
        last_report = time.perf_counter()
        workers = self.config.tool_workers
        pool = ThreadPoolExecutor(workers, thread_name_prefix="agent-tool") if workers else contextlib.nullcontext()
        with pool as self._pool:
            while pending or self._running:
                self._admit(pending, n)
                busy = self.sampler.has_work()
                if not busy and not self._tools and self._running:
                    raise RuntimeError(f"{len(self._running)} trajectories wait, but neither the sampler nor a tool "
                                       "has work for them")
                self._collect_tools(block=not busy)
                if self.sampler.has_work():
                    for out in self.sampler.step():
                        self._on_output(out)
                if on_progress and time.perf_counter() - last_report >= progress_interval:
                    last_report = time.perf_counter()
                    on_progress(self.stats)
        if on_progress:
            on_progress(self.stats)
        order = {q.id: i for i, q in enumerate(questions)}
        return sorted(self._done, key=lambda t: (order[t.question_id], t.sample_index))

    # --- admission and budgets ---
    def _admit(self, pending: deque, n: int):
        limit = self.config.max_concurrent
        while pending and (not self._running or limit is None or len(self._running) + n <= limit):
            self._start(pending.popleft(), n)

    def _start(self, q: Question, n: int):
        c = self.config
        prompt = self.tokenizer.prompt_ids(q.question, c.system_prompt, c.user_prefix)
        params = self.params
        if params.seed is not None:
            params = dataclasses.replace(params, seed=question_seed(params.seed, q.id))
        sampling = {name: getattr(params, name) for name in SAMPLING_FIELDS}
        episodes = []
        for i in range(n):
            seed = None if params.seed is None else params.seed + i  # the sampler seeds sample i with seed + i
            t = Trajectory(q.id, i, q.question, list(q.answers), q.data_source, prompt,
                           sampling={**sampling, "seed": seed}, policy_version=self._policy_version)
            episodes.append(_Episode(t, q, None, params))
        try:
            env = self.env_for(q)
        except Exception as e:
            return self._finish_all(episodes, "error", f"no environment: {type(e).__name__}: {e}")
        room = self._room(episodes[0].traj)
        if room < 1:
            return self._finish_all(episodes, "context_limit", f"the prompt ({len(prompt)} tokens) leaves no room "
                                                               f"under a context of {self.max_context}")
        try:
            rids = self.sampler.add(prompt, self._params(episodes[0], room), n=n, resumable=True)
        except Exception as e:
            return self._finish_all(episodes, "error", f"sampler refused the prompt: {type(e).__name__}: {e}")
        for ep, rid in zip(episodes, rids):
            ep.env, ep.rid = env, rid
            self._running[rid] = ep

    def _finish_all(self, episodes: list[_Episode], reason: str, error: str):
        for ep in episodes:
            self._finish(ep, reason, error)

    @staticmethod
    def _params(ep: _Episode, max_new_tokens: int):
        return dataclasses.replace(ep.params, max_new_tokens=max_new_tokens)

    def _response_left(self, t: Trajectory) -> float:
        if self.config.max_response_tokens is None:
            return math.inf
        return self.config.max_response_tokens - len(t.response_ids)

    def _context_left(self, t: Trajectory, reserve: int = 0) -> float:
        if self.max_context is None:
            return math.inf
        return self.max_context - reserve - len(t.prompt_ids) - len(t.response_ids)

    def _room(self, t: Trajectory) -> int:
        """Tokens the next normal turn may sample (one of the two limits is finite)."""
        room = min(self._response_left(t), self._context_left(t, self._reserve))
        return int(room) if room >= 1 else 0

    # --- events ---
    def _on_output(self, out):
        ep = self._running[out.request_id]
        try:
            self._on_turn(ep, out)
        except Exception as e:
            self._finish(ep, "error", f"{type(e).__name__}: {e}")

    def _on_turn(self, ep: _Episode, out):
        t, c = ep.traj, self.config
        ids = list(out.token_ids)
        t.response_ids += ids
        t.response_mask += [1] * len(ids)
        t.rollout_logprobs += [float(x) for x in out.logprobs]
        t.num_turns += 1
        self.stats.sampled_tokens += len(ids)
        closed = out.finish_reason == "stop"
        stopped = closed and ids and ids[-1] in self.params.stop_token_ids
        text = self.tokenizer.decode(ids[:-1] if stopped else ids)
        t.turns.append({"role": "assistant", "content": text})
        if ep.final_call:
            return self._finish(ep, "answer" if turn_answers(text) else "context_limit")
        if turn_answers(text):
            return self._finish(ep, "answer")
        if not closed:  # cut by a token budget
            if self._response_left(t) < 1:
                return self._finish(ep, "budget")
            return self._out_of_context(ep, closed=False)
        call, problem = parse_tool_call(text)
        if call is None and (problem is None or c.mode == "train"):
            return self._finish(ep, "no_tool_call", problem)
        if t.num_turns >= c.max_turns:
            return self._finish(ep, "max_turns")
        if call is None:
            record = ToolCallRecord(t.num_turns, MALFORMED_CALL, {}, error=problem)
            return self._respond(ep, record, TOOL_ERROR.format(problem))
        record = ToolCallRecord(t.num_turns, call.name, call.arguments)
        if self._pool is None or self._latency.inline(call.name):
            self.stats.tool_calls += 1
            return self._tool_done(ep, record, execute_tool(ep.env, call, ep.question.mask_url))
        self._tools[self._pool.submit(execute_tool, ep.env, call, ep.question.mask_url)] = (ep, record)
        self.stats.tools_in_flight += 1

    def _collect_tools(self, block: bool):
        if not self._tools:
            return
        if block:
            done, _ = wait(list(self._tools), return_when=FIRST_COMPLETED)
        else:
            done = [f for f in self._tools if f.done()]
        for future in done:
            ep, record = self._tools.pop(future)
            self.stats.tools_in_flight -= 1
            self.stats.tool_calls += 1
            try:
                self._tool_done(ep, record, future.result())
            except Exception as e:
                self._finish(ep, "error", f"{type(e).__name__}: {e}")

    def _tool_done(self, ep: _Episode, record: ToolCallRecord, result: tuple):
        text, record.success, record.error, record.latency_s = result
        self._latency.observe(record.name, record.latency_s)
        self._respond(ep, record, text)

    def _respond(self, ep: _Episode, record: ToolCallRecord, text: str):
        t = ep.traj
        ids = self.tokenizer.tool_response_ids(text)
        record.response_tokens = len(ids)
        t.tool_calls.append(record)
        if not record.success:
            self.stats.tool_errors[record.name] = self.stats.tool_errors.get(record.name, 0) + 1
        if self._response_left(t) - len(ids) < 1:
            return self._finish(ep, "budget")
        if self._context_left(t, self._reserve) - len(ids) < 1:
            return self._out_of_context(ep, closed=True)
        self._force(t, ids)
        t.turns.append({"role": "tool", "content": text})
        self.sampler.extend(ep.rid, ids, self._params(ep, self._room(t)))

    def _out_of_context(self, ep: _Episode, closed: bool):
        """Training ends here; evaluation closes the turn, adds the reminder and calls the model once more."""
        t = ep.traj
        if self.config.mode == "train":
            return self._finish(ep, "context_limit")
        forced = ([] if closed else [self.tokenizer.im_end_id]) + self._reminder_ids
        self._force(t, forced)
        t.turns.append({"role": "user", "content": self.config.reminder})
        room = int(min(self.config.final_answer_tokens, self._response_left(t), self._context_left(t)))
        if room < 1:
            return self._finish(ep, "budget" if self._response_left(t) < 1 else "context_limit")
        ep.final_call = True
        self.sampler.extend(ep.rid, forced, self._params(ep, room))

    @staticmethod
    def _force(t: Trajectory, ids: list[int]):
        t.response_ids += ids
        t.response_mask += [0] * len(ids)
        t.rollout_logprobs += [0.0] * len(ids)

    def _finish(self, ep: _Episode, reason: str, error: str | None = None):
        t = ep.traj
        t.termination, t.error = reason, error
        t.answer = sampled_answer(t.turns)
        t.elapsed_s = time.perf_counter() - ep.started
        if ep.rid is not None:
            self._running.pop(ep.rid, None)
            try:
                self.sampler.release(ep.rid)
            except Exception:
                if reason != "error":  # after an error the request may already be gone
                    raise
        self._done.append(t)
        self.stats.done += 1
        if self._on_trajectory:
            self._on_trajectory(t)


def print_progress(stats: RolloutStats, stream=None):
    """One self-overwriting progress line (stderr by default); the caller ends it with a newline when the run is
    over."""
    stream = stream or sys.stderr
    stream.write("\r" + stats.line() + " " * 4)
    stream.flush()
