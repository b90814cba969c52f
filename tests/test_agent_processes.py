"""Rollouts across worker processes (litere/agent/processes.py): every trajectory once, in question order, through
the caller's callbacks; a worker that fails or dies is an error that names it, never a hang. That the trajectories
are those of one process is proved in tests/test_rollout_identity.py and tests/test_rl_curriculum.py."""
import functools
import os
import signal
import time

import pytest

from litere.agent import AgentProcesses, WorkerError
from test_rollout_identity import SCRIPTED_QUESTIONS, scripted_agent


def failing_agent():
    raise FileNotFoundError("no model in /nowhere")


class _Dying:
    def run(self, questions, n, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


def dying_agent():
    return _Dying()


def test_every_trajectory_arrives_once_in_question_order_with_progress():
    questions = SCRIPTED_QUESTIONS[:10]
    seen, progress = [], []
    agent = AgentProcesses(functools.partial(scripted_agent, "sampled"), processes=2)
    trajectories = agent.run(questions, n=2, on_trajectory=seen.append, on_progress=progress.append)
    assert [(t.question_id, t.sample_index) for t in trajectories] == [(q.id, i) for q in questions for i in range(2)]
    assert sorted(id(t) for t in seen) == sorted(id(t) for t in trajectories)
    stats = progress[-1]
    assert stats.done == stats.total == 20
    assert stats.sampled_tokens == sum(t.sampled_tokens for t in trajectories) > 0
    assert stats.tool_calls == sum(len(t.tool_calls) for t in trajectories)


def test_fewer_questions_than_processes():
    trajectories = AgentProcesses(functools.partial(scripted_agent, "greedy"), processes=3).run(SCRIPTED_QUESTIONS[:1])
    assert [t.question_id for t in trajectories] == ["q00"]


def test_a_failing_worker_raises_with_its_traceback():
    with pytest.raises(WorkerError, match=r"(?s)rollout worker \d of 2 failed.*FileNotFoundError: no model in "
                                          "/nowhere"):
        AgentProcesses(failing_agent, processes=2).run(SCRIPTED_QUESTIONS[:4])


def test_a_killed_worker_is_an_error_not_a_hang():
    start = time.perf_counter()
    with pytest.raises(WorkerError, match="died with exit code -9"):
        AgentProcesses(dying_agent, processes=2, poll_seconds=0.1).run(SCRIPTED_QUESTIONS[:4])
    assert time.perf_counter() - start < 60


def test_processes_and_threads_must_be_positive():
    with pytest.raises(ValueError, match="processes >= 1 and threads >= 1"):
        AgentProcesses(failing_agent, processes=0)
