"""The questions of an RL run in a seeded, resumable order: each epoch is a fresh permutation; a step takes the
next `per_step` questions (an epoch's remainder that cannot fill a step is skipped)."""
from __future__ import annotations

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
