"""Rollouts across worker processes (litere/agent/processes.py): every trajectory once, in question order, through
the caller's callbacks; a worker that fails or dies is an error that names it, never a hang; a kept pool reuses its
workers, replaces them after a failure and never outlives its parent. That the trajectories
are those of one process is proved in tests/test_rollout_identity.py and tests/test_rl_curriculum.py."""
import functools
import os
import signal
import subprocess
import sys
import time

import pytest

from litere.agent import AgentProcesses, WorkerError, WorkerPool
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


def _pids(pool) -> list[int]:
    return [worker.pid for worker in pool._workers]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purpose
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_pool_keeps_its_workers_between_runs_and_stops_them_on_close():
    greedy = functools.partial(scripted_agent, "greedy")
    with WorkerPool(2) as pool:
        first = pool.run(greedy, SCRIPTED_QUESTIONS[:4])
        pids = _pids(pool)
        second = pool.agent(greedy).run(SCRIPTED_QUESTIONS[:4])
        assert _pids(pool) == pids
        assert [t.response_ids for t in second] == [t.response_ids for t in first]
    assert not any(map(_alive, pids))


def test_a_failed_run_stops_the_pool_and_the_next_run_starts_new_workers():
    greedy = functools.partial(scripted_agent, "greedy")
    with WorkerPool(2) as pool:
        pool.run(greedy, SCRIPTED_QUESTIONS[:2])
        pids = _pids(pool)
        with pytest.raises(WorkerError, match="FileNotFoundError: no model in /nowhere"):
            pool.run(failing_agent, SCRIPTED_QUESTIONS[:4])
        assert not any(map(_alive, pids))
        assert [t.question_id for t in pool.run(greedy, SCRIPTED_QUESTIONS[:2])] == ["q00", "q01"]


def test_a_worker_killed_while_idle_is_replaced_before_the_next_run():
    greedy = functools.partial(scripted_agent, "greedy")
    with WorkerPool(2) as pool:
        pool.run(greedy, SCRIPTED_QUESTIONS[:2])
        os.kill(_pids(pool)[1], signal.SIGKILL)
        pool._workers[1].join()
        assert [t.question_id for t in pool.run(greedy, SCRIPTED_QUESTIONS[:2])] == ["q00", "q01"]


def test_workers_exit_when_their_parent_dies_without_closing_the_pool():
    """The parent leaves with os._exit: no atexit, no close(); its idle workers notice and exit."""
    script = (
        "import functools, os, sys\n"
        "sys.path.insert(0, {tests!r})\n"
        "from litere.agent import WorkerPool\n"
        "from test_rollout_identity import SCRIPTED_QUESTIONS, scripted_agent\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(2)\n"
        "    pool.run(functools.partial(scripted_agent, 'greedy'), SCRIPTED_QUESTIONS[:2])\n"
        "    print(*(w.pid for w in pool._workers), flush=True)\n"
        "    os._exit(0)\n").format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, pids))
