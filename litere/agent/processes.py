"""Rollouts across processes: the questions are dealt round-robin to `processes` workers, each of which builds its
own agent (model, sampler, environment) and runs its share with `threads` torch threads.

On a CPU, one process per core decodes faster than one process with a thread per core: a small model's steps are
too short for intra-op threads to share well (BENCHMARKS.md, "Rollouts"), and torch.compile's code is not safe to
run from several threads of one process. A question's samples stay in one worker, and each trajectory is seeded
from its question and sample index (loop.question_seed), so with the threads per process of a single agent the
trajectories are that agent's (tests/test_rollout_identity.py). Another thread count can round a logit
differently; a sampled token may then change (greedy evaluations of the demo gave the same trajectories).
"""
from __future__ import annotations

import multiprocessing
import queue
import time
import traceback

from ..questions import Question
from .loop import RolloutStats
from .trajectory import Trajectory


class WorkerError(RuntimeError):
    """A rollout worker failed (its traceback is in the message) or died."""


def _work(make_agent, questions: list[Question], n: int, threads: int, policy_version, results, index: int):
    import torch

    try:
        torch.set_num_threads(threads)
        agent = make_agent()
        agent.run(questions, n, policy_version=policy_version,
                  on_trajectory=lambda t: results.put(("trajectory", index, t)))
        results.put(("done", index, None))
    except BaseException:
        results.put(("error", index, traceback.format_exc()))


class AgentProcesses:
    """Runs like an Agent (`run(questions, n, ...)`), with the questions spread over worker processes.

    `make_agent` is called once in every worker and returns its Agent; it must be picklable (a module-level
    function, or functools.partial of one), since workers are started with the spawn method."""

    def __init__(self, make_agent, processes: int, threads: int = 1, poll_seconds: float = 0.5):
        if processes < 1 or threads < 1:
            raise ValueError(f"AgentProcesses needs processes >= 1 and threads >= 1, got {processes} and {threads}")
        self.make_agent, self.processes, self.threads = make_agent, processes, threads
        self.poll_seconds = poll_seconds

    def run(self, questions: list[Question], n: int = 1, *, policy_version: int | None = None, on_trajectory=None,
            on_progress=None, progress_interval: float = 1.0) -> list[Trajectory]:
        """All trajectories, ordered by question then sample index, as Agent.run. `on_trajectory` is called in
        this process as each one arrives; `on_progress` gets the counts of finished trajectories, their tool calls
        and sampled tokens."""
        self.stats = stats = RolloutStats(total=len(questions) * n)
        shares = [questions[i::self.processes] for i in range(self.processes)]
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        workers = {i: context.Process(target=_work, name=f"agent-worker-{i}", daemon=True,
                                      args=(self.make_agent, share, n, self.threads, policy_version, results, i))
                   for i, share in enumerate(shares) if share}
        done: list[Trajectory] = []
        last_report = time.perf_counter()
        finished = False
        try:
            for worker in workers.values():
                worker.start()
            running = set(workers)
            while running:
                try:
                    kind, index, payload = results.get(timeout=self.poll_seconds)
                except queue.Empty:
                    self._check_alive(workers, running)
                    continue
                if kind == "error":
                    raise WorkerError(f"rollout worker {index} of {self.processes} failed:\n{payload}")
                if kind == "done":
                    running.discard(index)
                    continue
                done.append(payload)
                stats.done += 1
                stats.tool_calls += len(payload.tool_calls)
                stats.sampled_tokens += payload.sampled_tokens
                if on_trajectory:
                    on_trajectory(payload)
                if on_progress and time.perf_counter() - last_report >= progress_interval:
                    last_report = time.perf_counter()
                    on_progress(stats)
            finished = True
        finally:
            for worker in workers.values():
                if finished:  # a worker that sent its last message may still be flushing its queue or exiting
                    worker.join(timeout=30)
                if worker.is_alive():
                    worker.terminate()
                worker.join()
            results.close()
        if on_progress:
            on_progress(stats)
        order = {q.id: i for i, q in enumerate(questions)}
        return sorted(done, key=lambda t: (order[t.question_id], t.sample_index))

    def _check_alive(self, workers: dict, running: set):
        """A worker that ended without its last message was killed (a signal, the OOM killer) or crashed in C."""
        for index in running:
            code = workers[index].exitcode
            if code is not None and code != 0:
                raise WorkerError(f"rollout worker {index} of {self.processes} died with exit code {code} (a "
                                  "negative code is the signal that ended it) before its questions were done")
