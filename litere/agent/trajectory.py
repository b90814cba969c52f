"""Trajectory records (docs/protocol.md section 8): what one rollout produced, token by token, and how it ended."""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field

from ..textlines import utf8_lines

# the sampling settings a record keeps (docs/protocol.md section 8); seed is the one that sample was drawn with
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "repetition_penalty", "seed")


@dataclass
class ToolCallRecord:
    turn: int  # the assistant turn (1-based) that made the call
    name: str
    arguments: dict
    latency_s: float = 0.0
    success: bool = False
    error: str | None = None
    response_tokens: int = 0  # ids of the whole tool-response segment appended to the context


@dataclass
class Trajectory:
    """One rollout. `response_ids` is everything after the prompt: sampled turns (mask 1, with their rollout
    logprobs) and forced segments — tool responses, the context-limit reminder — (mask 0, logprob 0)."""
    question_id: str
    sample_index: int
    question: str
    answers: list[str]
    data_source: str | None
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    rollout_logprobs: list[float] = field(default_factory=list)
    turns: list[dict] = field(default_factory=list)  # {"role": "assistant" | "tool" | "user", "content": text}
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    num_turns: int = 0  # assistant turns (model calls)
    answer: str | None = None
    termination: str | None = None
    error: str | None = None
    elapsed_s: float = 0.0
    reward: float | None = None
    judge: dict | None = None
    sampling: dict | None = None  # SAMPLING_FIELDS as sampled (None: a record written before they were kept)
    policy_version: int | None = None  # the training step whose weights sampled it

    @property
    def turns_original(self) -> int:
        """Turns as the original counts them, the measure of the paper's turn figures (its verl agent loop's
        `num_turns = user_turns + assistant_turns + 1`): the user turns appended after the prompt (tool responses,
        tool error texts, the reminder) + assistant turns + 1 for the prompt. 2A for A assistant turns that end
        on an assistant turn."""
        return sum(turn["role"] != "assistant" for turn in self.turns) + self.num_turns + 1

    @property
    def sampled_tokens(self) -> int:
        return sum(self.response_mask)

    @property
    def tool_tokens(self) -> int:
        return len(self.response_ids) - self.sampled_tokens

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["token_counts"] = {"prompt": len(self.prompt_ids), "response": len(self.response_ids),
                             "sampled": self.sampled_tokens, "forced": self.tool_tokens}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trajectory:
        """A record read back; raises ValueError naming the field at fault (a wrong type, lengths that differ)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = {"question_id", "sample_index", "question", "answers", "data_source", "prompt_ids"} - d.keys()
        if missing:
            raise ValueError(f"trajectory record lacks {', '.join(sorted(missing))}")
        kwargs = {k: _checked(v, _HINTS[k], k) for k, v in d.items() if k in _HINTS and k != "tool_calls"}
        calls = d.get("tool_calls", [])
        if not isinstance(calls, list):
            raise ValueError(f"field 'tool_calls' must be a list, got {type(calls).__name__}")
        kwargs["tool_calls"] = [_tool_call(c, f"tool_calls[{i}]") for i, c in enumerate(calls)]
        t = cls(**kwargs)
        n = len(t.response_ids)
        if len(t.response_mask) != n or len(t.rollout_logprobs) != n:
            raise ValueError(f"fields 'response_ids', 'response_mask' and 'rollout_logprobs' must have one entry per "
                             f"token; they have {n}, {len(t.response_mask)} and {len(t.rollout_logprobs)}")
        if any(m not in (0, 1) for m in t.response_mask):
            raise ValueError("field 'response_mask' must hold only 0 and 1")
        if any(i < 0 for i in t.prompt_ids) or any(i < 0 for i in t.response_ids):
            raise ValueError("fields 'prompt_ids' and 'response_ids' must hold token ids >= 0")
        if any(math.isnan(x) or x == math.inf for x in t.rollout_logprobs):
            raise ValueError("field 'rollout_logprobs' holds NaN or +inf")
        for i, turn in enumerate(t.turns):
            if not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
                raise ValueError(f"field 'turns[{i}]' must have a string 'role' and 'content'")
        return t


def _tool_call(c, name: str) -> ToolCallRecord:
    if not isinstance(c, dict):
        raise ValueError(f"field {name!r} must be an object, got {type(c).__name__}")
    hints = typing.get_type_hints(ToolCallRecord)
    unknown = set(c) - hints.keys()
    if unknown:
        raise ValueError(f"field {name!r} has unknown key(s) {', '.join(sorted(unknown))}")
    missing = {"turn", "name", "arguments"} - c.keys()
    if missing:
        raise ValueError(f"field {name!r} lacks {', '.join(sorted(missing))}")
    return ToolCallRecord(**{k: _checked(v, hints[k], f"{name}.{k}") for k, v in c.items()})


def _checked(value, kind, name: str):
    """`value` if it has the annotated type `kind` (int, float, str, bool, dict, list[X], X | None), else a
    ValueError naming the field; floats must not be NaN, strings must be encodable as UTF-8."""
    def bad(expected: str):
        text = repr(value)
        return ValueError(f"field {name!r} must be {expected}, got {type(value).__name__} "
                          f"{text if len(text) <= 60 else text[:57] + '...'}")

    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = [o for o in typing.get_args(kind) if o is not type(None)]
        if value is None:
            return None
        return _checked(value, options[0], name)
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise bad(f"a list of {item.__name__}")
        if item is int and all(type(v) is int for v in value):  # the common cases, fast
            return value
        if item is float and all(type(v) is float and v == v for v in value):  # v == v: not NaN
            return value
        return [_checked(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if kind is int:
        if type(value) is not int:
            raise bad("an integer")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if math.isnan(value):
            raise bad("a number, not NaN")
        return float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"field {name!r} holds an unpaired surrogate at character {e.start}") from None
    elif kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind is dict:
        if not isinstance(value, dict):
            raise bad("an object")
    return value


_HINTS = typing.get_type_hints(Trajectory)


def check_trainable(trajectories: list[Trajectory], temperature: float) -> None:
    """Raise ValueError, naming the question and sample, unless every trajectory was sampled at the trainer's
    `temperature`: rollout logprobs are of logits / T, so only then do they compare with the trainer's."""
    for t in trajectories:
        where = f"question {t.question_id!r} sample {t.sample_index}"
        if not t.sampling or t.sampling.get("temperature") is None:
            raise ValueError(f"{where}: the record lacks its sampling settings; its logprobs' temperature is unknown")
        if t.sampling["temperature"] == 0:
            raise ValueError(f"{where}: greedy trajectories cannot be trained on: their logprobs are of argmax, not "
                             "of a distribution")
        if t.sampling["temperature"] != temperature:
            raise ValueError(f"{where}: sampled at temperature {t.sampling['temperature']}, but the trainer uses "
                             f"{temperature}; rollout logprobs are of logits / T, so they would not compare")


def write_trajectories(trajectories: list[Trajectory], path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")


class TrajectoryFileError(ValueError):
    """A trajectory file cannot be read; the message names the file, line and field at fault."""


def read_trajectories(path) -> list[Trajectory]:
    out = []
    for line_no, line in utf8_lines(path, TrajectoryFileError):
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise TrajectoryFileError(f"{where}: not valid JSON ({e})") from None
        try:
            out.append(Trajectory.from_dict(record))
        except (ValueError, TypeError) as e:
            raise TrajectoryFileError(f"{where}: not a trajectory record ({e})") from None
    return out
