"""The RL question order: seeded, resumable, and with balance_sources an equal share of every data_source in each
step."""
from collections import Counter

import pytest

from litere.questions import Question
from litere.rl.prompts import BalancedPromptOrder, PromptOrder, PromptPosition, prompt_order

SOURCES = ["direct"] * 30 + ["2hop"] * 12 + ["3hop"] * 5


def run(order, steps: int, position=None) -> list[list[int]]:
    position = position or PromptPosition()
    out = []
    for _ in range(steps):
        out.append(order.indices(position))
        position = order.advance(position)
    return out


def test_each_step_takes_an_equal_share_of_every_source_with_the_remainder_in_turn():
    order = BalancedPromptOrder(SOURCES, 7, seed=0)
    steps = run(order, 12)
    per_step = [Counter(SOURCES[i] for i in step) for step in steps]
    assert all(sum(c.values()) == 7 and len(set(step)) == 7 for c, step in zip(per_step, steps))
    assert all(sorted(c.values()) == [2, 2, 3] for c in per_step)
    # the extra question goes to each source in turn
    assert [max(c, key=c.get) for c in per_step[:3]] == ["2hop", "3hop", "direct"]
    total = sum(per_step, Counter())
    assert total == {"direct": 28, "2hop": 28, "3hop": 28}


def test_each_source_runs_through_its_own_permutation_before_repeating():
    order = BalancedPromptOrder(SOURCES, 6, seed=3)
    small = [[i for i in step if SOURCES[i] == "3hop"] for step in run(order, 10)]  # 2 a step of 5 questions
    flat = [i for chunk in small for i in chunk]
    # chunks of 2 from permutations of 5: the fifth question of each permutation is skipped, none repeats early
    for epoch in range(5):
        assert len(set(flat[4 * epoch: 4 * epoch + 4])) == 4
    assert set(flat) == {i for i, s in enumerate(SOURCES) if s == "3hop"}
    direct = [i for step in run(order, 15) for i in step if SOURCES[i] == "direct"]
    assert sorted(direct[:30]) == list(range(30))  # 2 a step: all 30 in 15 steps, each once


def test_the_order_is_seeded_and_a_resumed_position_continues_it():
    first = run(BalancedPromptOrder(SOURCES, 7, seed=1), 20)
    assert first == run(BalancedPromptOrder(SOURCES, 7, seed=1), 20)
    assert first != run(BalancedPromptOrder(SOURCES, 7, seed=2), 20)
    order = BalancedPromptOrder(SOURCES, 7, seed=1)
    position = PromptPosition()
    for _ in range(13):
        position = order.advance(position)
    assert position == PromptPosition(epoch=2, step=1)  # 47 // 7 = 6 steps an epoch
    assert run(BalancedPromptOrder(SOURCES, 7, seed=1), 7, position) == first[13:]  # a fresh order, as on resume
    assert run(order, 3, PromptPosition(0, 2)) == first[2:5]  # and going back is fine


def test_a_source_smaller_than_its_share_gives_the_rest_to_the_others():
    sources = ["a"] * 10 + ["b"] * 10 + ["c"] * 2
    steps = run(BalancedPromptOrder(sources, 9, seed=0), 6)
    for step in steps:
        counts = Counter(sources[i] for i in step)
        assert counts["c"] == 2 and counts["a"] + counts["b"] == 7 and abs(counts["a"] - counts["b"]) <= 1
        assert len(set(step)) == 9


def test_the_factory_and_the_plain_order_keep_their_interface():
    questions = [Question(f"q{i}", "?", ["x"], data_source=s) for i, s in enumerate(SOURCES)]
    assert isinstance(prompt_order(questions, 7, 0, balance_sources=True), BalancedPromptOrder)
    plain = prompt_order(questions, 7, 0)
    assert type(plain) is PromptOrder and plain.total_steps(2.0) == 12
    assert run(plain, 2) == run(PromptOrder(47, 7, 0), 2)
    with pytest.raises(ValueError, match="larger than the question set"):
        BalancedPromptOrder(SOURCES[:5], 6, seed=0)
