"""Rollouts across processes: the questions are dealt round-robin to `processes` workers, each of which builds its
own agent (model, sampler, environment) and runs its share with `threads` torch threads.

On a CPU, one process per core decodes faster than one process with a thread per core: a small model's steps are
too short for intra-op threads to share well (BENCHMARKS.md, "Rollouts"), and torch.compile's code is not safe to
run from several threads of one process. A question's samples stay in one worker, and each trajectory is seeded
from its question and sample index (loop.question_seed), so with the threads per process of a single agent the
trajectories are that agent's (tests/test_rollout_identity.py). Another thread count can round a logit
differently; a sampled token may then change (greedy evaluations of the demo gave the same trajectories).

A `WorkerPool` keeps its workers between runs: a run builds a new agent in each worker, but the worker's imports
and its compiled decode step (kept per model configuration, litere/sampler/decode_graph.py) stay, which saves a
few seconds of every run after the first (BENCHMARKS.md, "A process per core").
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback

from ..questions import Question
from .loop import RolloutStats
from .trajectory import Trajectory

_PARENT_POLL_SECONDS = 2.0


class WorkerError(RuntimeError):
    """A rollout worker failed (its traceback is in the message) or died."""


def _serve(tasks, results, index: int, threads: int, parent: int):
    """A worker's life: runs one job at a time from `tasks` until it reads None or its parent is gone."""
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            job = tasks.get(timeout=_PARENT_POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without closing the pool
                return
            continue
        if job is None:
            return
        make_agent, questions, n, policy_version = job
        try:
            agent = make_agent()
            agent.run(questions, n, policy_version=policy_version,
                      on_trajectory=lambda t: results.put(("trajectory", index, t)))
            del agent
            results.put(("done", index, None))
        except BaseException:
            results.put(("error", index, traceback.format_exc()))


class WorkerPool:
    """`processes` rollout workers of `threads` torch threads each, started on the first run and kept until
    `close()` (or the end of a `with` block). A run that fails stops them; the next run starts new ones."""

    def __init__(self, processes: int, threads: int = 1, poll_seconds: float = 0.5):
        if processes < 1 or threads < 1:
            raise ValueError(f"rollout workers: need processes >= 1 and threads >= 1, got {processes} and {threads}")
        self.processes, self.threads, self.poll_seconds = processes, threads, poll_seconds
        self._context = multiprocessing.get_context("spawn")
        self._workers: list = []
        self._tasks: list = []
        self._results = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info):
        self.close()

    def agent(self, make_agent) -> AgentProcesses:
        """An agent (`run(questions, n, ...)`) whose runs build `make_agent()` in this pool's workers."""
        return AgentProcesses(make_agent, self.processes, self.threads, self.poll_seconds, pool=self)

    def run(self, make_agent, questions: list[Question], n: int = 1, *, policy_version: int | None = None,
            on_trajectory=None, on_progress=None, progress_interval: float = 1.0) -> list[Trajectory]:
        """All trajectories, ordered by question then sample index, as Agent.run; `make_agent` is called once in
        every worker that has questions and must be picklable (a module-level function, or functools.partial of
        one), since workers are started with the spawn method."""
        stats = RolloutStats(total=len(questions) * n)
        self._start()
        running = set()
        done: list[Trajectory] = []
        last_report = time.perf_counter()
        finished = False
        try:
            for index in range(self.processes):
                share = questions[index::self.processes]
                if share:
                    self._tasks[index].put((make_agent, share, n, policy_version))
                    running.add(index)
            while running:
                try:
                    kind, index, payload = self._results.get(timeout=self.poll_seconds)
                except queue.Empty:
                    self._check_alive(running)
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
            if not finished:  # a worker failed, died or was interrupted: the others' state is unknown
                self.close(wait=False)
        if on_progress:
            on_progress(stats)
        order = {q.id: i for i, q in enumerate(questions)}
        return sorted(done, key=lambda t: (order[t.question_id], t.sample_index))

    def close(self, wait: bool = True):
        """Stop the workers: each finishes what it is writing and exits (`wait`), or is terminated."""
        for tasks in self._tasks:
            if wait:
                tasks.put(None)
        for worker in self._workers:
            if wait:  # a worker that sent its last message may still be flushing its queue or exiting
                worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
            worker.join()
        for channel in (*self._tasks, *([self._results] if self._results is not None else [])):
            channel.close()
            channel.cancel_join_thread()
        self._workers, self._tasks, self._results = [], [], None

    def _start(self):
        if self._workers and all(worker.is_alive() for worker in self._workers):
            return
        self.close(wait=False)  # one that died while idle: start them all again
        self._results = self._context.Queue()
        self._tasks = [self._context.Queue() for _ in range(self.processes)]
        self._workers = [self._context.Process(target=_serve, name=f"agent-worker-{i}", daemon=True,
                                               args=(self._tasks[i], self._results, i, self.threads, os.getpid()))
                         for i in range(self.processes)]
        for worker in self._workers:
            worker.start()

    def _check_alive(self, running: set):
        """A worker that ended without its last message was killed (a signal, the OOM killer) or crashed in C."""
        for index in running:
            code = self._workers[index].exitcode
            if code is not None:
                raise WorkerError(f"rollout worker {index} of {self.processes} died with exit code {code} (a "
                                  "negative code is the signal that ended it) before its questions were done")


class AgentProcesses:
    """Runs like an Agent (`run(questions, n, ...)`), with the questions spread over worker processes.

    `make_agent` is called once in every worker and returns its Agent; it must be picklable (a module-level
    function, or functools.partial of one), since workers are started with the spawn method. Each run starts its
    own workers and stops them at its end, unless the agent comes from a `WorkerPool` (`pool.agent(make_agent)`),
    whose workers stay."""

    def __init__(self, make_agent, processes: int, threads: int = 1, poll_seconds: float = 0.5, *,
                 pool: WorkerPool | None = None):
        if processes < 1 or threads < 1:
            raise ValueError(f"AgentProcesses needs processes >= 1 and threads >= 1, got {processes} and {threads}")
        self.make_agent, self.processes, self.threads = make_agent, processes, threads
        self.poll_seconds, self.pool = poll_seconds, pool

    def run(self, questions: list[Question], n: int = 1, **kwargs) -> list[Trajectory]:
        """All trajectories, ordered by question then sample index, as Agent.run. `on_trajectory` is called in
        this process as each one arrives; `on_progress` gets the counts of finished trajectories, their tool calls
        and sampled tokens (WorkerPool.run)."""
        if self.pool is not None:
            return self.pool.run(self.make_agent, questions, n, **kwargs)
        with WorkerPool(self.processes, self.threads, self.poll_seconds) as pool:
            return pool.run(self.make_agent, questions, n, **kwargs)
