"""The questions of an RL run in a seeded, resumable order.

PromptOrder: each epoch is a fresh permutation of all the questions; a step takes the next `per_step` questions (an
epoch's remainder that cannot fill a step is skipped).

BalancedPromptOrder (`balance_sources = true`): each step takes an equal share of `per_step` from every
data_source, whatever the sources' sizes (the remainder goes to one more source each step, round robin). Each source
has its own seeded permutations, taken in consecutive chunks; a chunk that does not fit in what is left of the
source's permutation starts its next one, so a step never holds a question twice. A small source is therefore
repeated more often than a large one; a source with fewer questions than its share gives the rest to the others.

Both take a PromptPosition (epoch, step within the epoch; an epoch is num_questions // per_step steps), so a
checkpoint's position resumes either order exactly.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..questions import Question, QuestionFileError, load_questions


def load_question_files(paths: list[str]) -> list[Question]:
    """The questions of every file, in order; ids must be unique across the files."""
    if not paths:
        raise QuestionFileError('no question files: set questions=["FILE", ...]')
    questions, seen = [], {}
    for path in paths:
        for q in load_questions(path):
            if q.id in seen:
                raise QuestionFileError(f"{path}: question id {q.id!r} is also in {seen[q.id]}")
            seen[q.id] = path
            questions.append(q)
    return questions


@dataclass
class PromptPosition:
    epoch: int = 0
    step: int = 0  # steps taken in this epoch


class PromptOrder:
    def __init__(self, num_questions: int, per_step: int, seed: int):
        if per_step > num_questions:
            raise ValueError(f"prompts_per_step={per_step} is larger than the question set ({num_questions} "
                             "questions)")
        self.num_questions, self.per_step, self.seed = num_questions, per_step, seed
        self.steps_per_epoch = num_questions // per_step

    def total_steps(self, epochs: float) -> int:
        return int(epochs * self.steps_per_epoch)

    def indices(self, position: PromptPosition) -> list[int]:
        order = np.random.default_rng([self.seed, position.epoch]).permutation(self.num_questions)
        start = position.step * self.per_step
        return order[start:start + self.per_step].tolist()

    def advance(self, position: PromptPosition) -> PromptPosition:
        if position.step + 1 < self.steps_per_epoch:
            return PromptPosition(position.epoch, position.step + 1)
        return PromptPosition(position.epoch + 1, 0)


class BalancedPromptOrder(PromptOrder):
    """`sources[i]` is question i's data_source; see the module docstring."""

    def __init__(self, sources: list[str], per_step: int, seed: int):
        super().__init__(len(sources), per_step, seed)
        self.names = sorted(set(sources))
        self.members = [[i for i, s in enumerate(sources) if s == name] for name in self.names]
        self._cursor = (0, [(0, 0)] * len(self.names))  # (global step, per source (its epoch, offset)) memo

    def shares(self, step: int) -> list[int]:
        """Questions from each source (in `names` order) at global step `step`."""
        sizes = [len(m) for m in self.members]
        count = len(sizes)
        base, extra = divmod(self.per_step, count)
        share = [base + ((s - step) % count < extra) for s in range(count)]
        excess = sum(max(0, k - n) for k, n in zip(share, sizes))
        share = [min(k, n) for k, n in zip(share, sizes)]
        s = step % count
        while excess:  # ends: per_step <= the number of questions
            if share[s] < sizes[s]:
                share[s] += 1
                excess -= 1
            s = (s + 1) % count
        return share

    def _permutation(self, source: int, epoch: int) -> list[int]:
        order = np.random.default_rng([self.seed, zlib.crc32(self.names[source].encode()), epoch])
        return [self.members[source][i] for i in order.permutation(len(self.members[source]))]

    def _chunks(self, step: int) -> list[tuple[int, int, int]]:
        """Per source, (its epoch, start, length) of the chunk it gives at global step `step`."""
        at, cursors = self._cursor
        if step < at:
            at, cursors = 0, [(0, 0)] * len(self.names)
        while True:
            chunks = []
            for source, ((epoch, offset), k) in enumerate(zip(cursors, self.shares(at))):
                if offset + k > len(self.members[source]):
                    epoch, offset = epoch + 1, 0
                chunks.append((epoch, offset, k))
            if at == step:
                self._cursor = (at, cursors)
                return chunks
            cursors = [(epoch, offset + k) for epoch, offset, k in chunks]
            at += 1

    def indices(self, position: PromptPosition) -> list[int]:
        parts = [self._permutation(source, epoch)[start:start + k]
                 for source, (epoch, start, k) in enumerate(self._chunks(self.global_step(position)))]
        # interleaved, so that every rank's share of the step mixes the sources
        return [part[j] for j in range(max(map(len, parts))) for part in parts if j < len(part)]

    def global_step(self, position: PromptPosition) -> int:
        return position.epoch * self.steps_per_epoch + position.step


def prompt_order(questions: list[Question], per_step: int, seed: int, balance_sources: bool = False) -> PromptOrder:
    """The order of an RL run's questions: balanced over data_source or not (ValueError: per_step too large)."""
    if balance_sources:
        return BalancedPromptOrder([q.data_source or "" for q in questions], per_step, seed)
    return PromptOrder(len(questions), per_step, seed)
