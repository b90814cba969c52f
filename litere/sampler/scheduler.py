"""The sampler's sequences and their scheduling: which tokens each step computes, and which cache blocks hold them.

Continuous batching: each step's batch starts with one decode token for every running sequence (oldest first),
then continues prefills in progress, then admits waiting requests (new prompts, tokens forced by `extend`,
recomputation after preemption), in chunks up to `max_batch_tokens` tokens in all. A sequence joins the batch
as soon as it is admitted and leaves it when it finishes; nobody waits for a batch to drain.

Cache pressure: a waiting request is admitted only when blocks are free. A running sequence that needs a new block
and finds none preempts the newest other running sequence (its blocks are freed and it is recomputed later from its
tokens, which it keeps, so nothing is lost or truncated); with no running sequence to preempt, the caches of paused
(resumable) or queued requests are dropped (they are recomputed on resume); as a last resort the sequence preempts
itself. (A request that could never fit is refused earlier, by `Sampler.add`.)

Prompt sharing: the k samples of `add(prompt, n=k)` are one queued sequence (the leader) carrying k - 1 forks;
its prompt is prefilled once, and when the prefill completes the forks share its blocks by reference count, each
drawing its first token from the same logits. Whoever writes next into a shared, partly filled block copies it
first (copy-on-write). A cancelled leader hands its prefill and queue place to its first fork.

The scheduler is host-side bookkeeping only. The device work its decisions imply (block-table entries, block
copies, the penalty masks of a sequence that takes a row) is queued in `row_resets`, `table_writes`, `block_copies`
and `penalty_resets` for the engine to apply before its next forward pass and sampling.
"""
from __future__ import annotations

import math
from collections import deque

from .kv_cache import BlockManager
from .sampling import SamplingParams


class Sequence:
    """One sample's state. tokens = prompt + everything generated or forced; the first num_cached have their
    k/v in `blocks` (always ceil(num_cached / block_size) of them). While it runs, `row` is its row of the block
    table and of the penalty masks."""

    __slots__ = ("id", "params", "seed", "resumable", "budget", "tokens", "turn_start", "logprobs", "num_cached",
                 "blocks", "row", "status", "forks", "stop_ids")

    def __init__(self, request_id: int, tokens: list[int], params: SamplingParams, seed: int, resumable: bool,
                 budget: int, stop_ids: frozenset[int]):
        self.id = request_id
        self.tokens = tokens
        self.turn_start = len(tokens)  # where the tokens of the current turn (since the last add/extend) begin
        self.logprobs: list[float] = []  # of this turn's tokens
        self.num_cached = 0
        self.blocks: list[int] = []
        self.row: int | None = None
        self.status = "waiting"  # waiting | running | paused | finished
        self.forks: list[Sequence] = []  # samples that share this one's prefill (until it completes)
        self.params, self.seed, self.resumable, self.budget, self.stop_ids = params, seed, resumable, budget, stop_ids


class Scheduler:
    """The requests by id, the queues they move through (waiting -> running -> paused or finished), the block
    manager of the paged cache and the rows of the block table."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int, max_batch_tokens: int):
        self.block_size, self.max_batch_tokens = block_size, max_batch_tokens
        self.blocks = BlockManager(num_blocks)
        self.requests: dict[int, Sequence] = {}  # every request not finished or released
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last one is preempted first
        self.paused: dict[int, Sequence] = {}  # in pause order
        self._free_rows = list(range(max_num_seqs - 1, -1, -1))
        # device work for the engine, applied in order:
        self.row_resets: list[int] = []  # rows taken by another sequence: cleared to block 0, before the writes
        # (row, column) -> block, before the forward: one entry per cell, because a batched write of repeated
        # cells keeps an arbitrary one of them on CUDA (a fork's shared block and its copy, queued in one step)
        self.table_writes: dict[tuple[int, int], int] = {}
        self.block_copies: list[tuple[int, int]] = []  # (src, dst) copy-on-write before the forward
        self.penalty_resets: list[tuple[int, list[int], list[int]]] = []  # (row, prompt, output) before sampling

    # --- requests -------------------------------------------------------------------------------------------
    def add(self, samples: list[Sequence]):
        """Queue the samples of one prompt: the first prefills it, the others fork from it."""
        for seq in samples:
            self.requests[seq.id] = seq
        samples[0].forks = samples[1:]
        self.waiting.append(samples[0])

    def resume(self, seq: Sequence):
        """Queue a paused sequence again (its new tokens are prefilled; the cached prefix is reused)."""
        del self.paused[seq.id]
        seq.status = "waiting"
        self.waiting.append(seq)

    def release(self, seq: Sequence):
        """Forget a request: a paused one frees its cache; a queued or running one is cancelled."""
        del self.requests[seq.id]
        self._cancel(seq)
        seq.status = "finished"

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step -------------------------------------------------------------------------------------------
    def schedule(self) -> list[tuple[Sequence, int]]:
        """Pick this step's work: (sequence, number of its uncached tokens to process), with blocks for them."""
        batch: list[tuple[Sequence, int]] = []
        scheduled: set[int] = set()
        tokens_left = self.max_batch_tokens
        decoding = [s for s in self.running if len(s.tokens) - s.num_cached == 1]
        for seq in decoding:  # oldest first: the newest are the ones preempted
            if seq.status != "running":  # preempted by an older one in this loop
                continue
            if not self._make_room(seq, self._blocks_needed(seq, 1), scheduled):
                self._preempt(seq)
                continue
            self._grow(seq, 1)
            batch.append((seq, 1))
            scheduled.add(seq.id)
            tokens_left -= 1
        for seq in [s for s in self.running if s.id not in scheduled]:  # prefills in progress
            if tokens_left == 0:
                break
            if seq.status != "running":  # preempted to make room for an older one
                continue
            n = self._fit(seq, min(len(seq.tokens) - seq.num_cached, tokens_left), not batch, scheduled)
            if n:
                batch.append((seq, n))
                scheduled.add(seq.id)
                tokens_left -= n
        while self.waiting and tokens_left:
            seq = self.waiting[0]
            if len(self._free_rows) < 1 + len(seq.forks):
                break
            n = self._fit(seq, min(len(seq.tokens) - seq.num_cached, tokens_left), not batch, scheduled)
            if not n:
                break
            self.waiting.remove(seq)  # not popleft: making room may have queued preempted sequences before it
            self._admit(seq)
            batch.append((seq, n))
            scheduled.add(seq.id)
            tokens_left -= n
        return batch

    def computed(self, seq: Sequence, n: int) -> list[Sequence]:
        """Record that n more of seq's tokens are in the cache. Returns the sequences that draw their next token
        from the last of them: none while a prefill is incomplete, else seq and the forks that start from it now."""
        seq.num_cached += n
        if seq.num_cached < len(seq.tokens):
            return []
        forks, seq.forks = seq.forks, []
        for fork in forks:
            self._fork(seq, fork)
        return [seq, *forks]

    def finish(self, seq: Sequence):
        """Take a sequence whose turn ended out of the batch: a resumable one pauses with its cache, others end."""
        self.running.remove(seq)
        self._release_rows(seq)
        if seq.resumable:
            seq.status = "paused"
            self.paused[seq.id] = seq
        else:
            seq.status = "finished"
            self._drop_cache(seq)
            del self.requests[seq.id]

    # --- blocks ---------------------------------------------------------------------------------------------
    def _blocks_needed(self, seq: Sequence, n: int) -> int:
        new = math.ceil((seq.num_cached + n) / self.block_size) - len(seq.blocks)
        return new + self._needs_copy(seq)

    def _needs_copy(self, seq: Sequence) -> bool:
        """The next token lands in a partly filled block that other sequences share."""
        return seq.num_cached % self.block_size != 0 and self.blocks.refcount[seq.blocks[-1]] > 1

    def _fit(self, seq: Sequence, n: int, nothing_scheduled: bool, scheduled: set[int]) -> int:
        """Grow `seq` for up to n tokens within the free blocks (making room only when nothing else can run)."""
        def capacity():
            usable = len(seq.blocks) + self.blocks.num_free - self._needs_copy(seq)
            return min(n, usable * self.block_size - seq.num_cached)

        if capacity() <= 0 and nothing_scheduled:
            self._make_room(seq, self._blocks_needed(seq, min(n, self.block_size)), scheduled)
        n = max(capacity(), 0)
        if n:
            self._grow(seq, n)
        return n

    def _make_room(self, seq: Sequence, needed: int, scheduled: set[int]) -> bool:
        """Free blocks for `seq`: preempt the newest other unscheduled running sequence, else drop idle caches."""
        while self.blocks.num_free < needed:
            victim = next((s for s in reversed(self.running) if s is not seq and s.id not in scheduled), None)
            if victim is not None:
                self._preempt(victim)
                continue
            idle = [s for s in self.paused.values() if s.blocks]
            idle += [s for s in reversed(self.waiting) if s.blocks and s is not seq]
            if not idle:
                return False
            self._drop_cache(idle[0])
        return True

    def _grow(self, seq: Sequence, n: int):
        """Give `seq` the blocks for n more tokens, copying a shared last block first."""
        if self._needs_copy(seq):
            src, dst = seq.blocks[-1], self.blocks.allocate(seq.blocks[-2] if len(seq.blocks) > 1 else None)
            self.block_copies.append((src, dst))
            self.blocks.release([src])
            seq.blocks[-1] = dst
            if seq.row is not None:  # a queued sequence gets its whole row written when admitted
                self.table_writes[seq.row, len(seq.blocks) - 1] = dst
        for _ in range(math.ceil((seq.num_cached + n) / self.block_size) - len(seq.blocks)):
            block = self.blocks.allocate(seq.blocks[-1] if seq.blocks else None)
            seq.blocks.append(block)
            if seq.row is not None:
                self.table_writes[seq.row, len(seq.blocks) - 1] = block

    def _drop_cache(self, seq: Sequence):
        self.blocks.release(seq.blocks)
        seq.blocks, seq.num_cached = [], 0

    # --- rows: admission, forks, preemption, cancellation ---------------------------------------------------
    def _admit(self, seq: Sequence):
        for s in [seq, *seq.forks]:
            s.row = self._free_rows.pop()
        seq.status = "running"
        self.running.append(seq)
        self._queue_row_state(seq)

    def _queue_row_state(self, seq: Sequence):
        """Queue the device state of a sequence's row: its blocks and, if it uses penalties, its token masks.

        The rest of the row is reset to block 0 first: the compiled decode step reads every row of its batch up to
        the longest sequence's width (masking the keys past each sequence's end), and the ids a row's earlier
        sequence left there would send those reads all over the cache instead of to one block."""
        self.row_resets.append(seq.row)
        self.table_writes.update(((seq.row, j), b) for j, b in enumerate(seq.blocks))
        if seq.params.uses_penalties:
            self.penalty_resets.append((seq.row, seq.tokens[:seq.turn_start], seq.tokens[seq.turn_start:]))

    def _fork(self, leader: Sequence, fork: Sequence):
        fork.blocks = list(leader.blocks)
        self.blocks.share(fork.blocks)
        fork.num_cached = leader.num_cached
        fork.status = "running"
        self.running.append(fork)
        self._queue_row_state(fork)

    def _preempt(self, seq: Sequence):
        """Free a running sequence's cache and rows; it waits at the head of the queue to be recomputed."""
        self.running.remove(seq)
        self._release_rows(seq)
        self._drop_cache(seq)
        seq.status = "waiting"
        self.waiting.appendleft(seq)

    def _cancel(self, seq: Sequence):
        """Take a paused, queued or running sequence out of the scheduler and free its cache."""
        if seq.status == "paused":
            del self.paused[seq.id]
        elif seq in self.waiting or seq in self.running:
            queue = self.waiting if seq.status == "waiting" else self.running
            position = queue.index(seq)
            if seq.forks:  # its first unforked sample takes over the shared prefill and the queue place
                heir = seq.forks[0]
                heir.forks, heir.status = seq.forks[1:], seq.status
                heir.blocks, heir.num_cached, seq.blocks, seq.num_cached = seq.blocks, seq.num_cached, [], 0
                queue[position] = heir
                if heir.row is not None:
                    self._queue_row_state(heir)
            else:
                del queue[position]
            seq.forks = []
        else:  # an unforked sample: its leader carries on without it
            leader = next(s for s in [*self.waiting, *self.running] if seq in s.forks)
            leader.forks.remove(seq)
        self._release_rows(seq)
        self._drop_cache(seq)

    def _release_rows(self, seq: Sequence):
        """Return the rows of a sequence and of its unforked samples."""
        for s in [seq, *seq.forks]:
            if s.row is not None:
                self._free_rows.append(s.row)
                s.row = None
