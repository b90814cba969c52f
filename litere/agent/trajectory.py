"""Trajectory records (docs/protocol.md section 8): what one rollout produced, token by token, and how it ended."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

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
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"question_id", "sample_index", "question", "answers", "data_source", "prompt_ids"} - d.keys()
        if missing:
            raise ValueError(f"trajectory record lacks {', '.join(sorted(missing))}")
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["tool_calls"] = [ToolCallRecord(**c) for c in d.get("tool_calls", [])]
        return cls(**kwargs)


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


def read_trajectories(path) -> list[Trajectory]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(Trajectory.from_dict(json.loads(line)))
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{path}:{line_no}: not a trajectory record ({e})") from None
    return out


