"""KV-cached sampler with continuous batching: token ids in, token ids + per-token logprobs out.

Each `step()` runs one packed forward pass over a mix of work: one decode token for every running sequence, then
prefill chunks (new prompts, tokens forced by `extend`, recomputation after preemption) up to `max_batch_tokens`.
The model takes the flat token stream; a `CacheStep` tells each attention layer where the tokens' k/v go in the
paged cache and which blocks each sequence reads, so prefill and decode share one forward.

Cache pressure: a request that could never fit (prompt + one token over the per-sequence limit) is refused by
`add`. A waiting request is admitted only when blocks are free. A running sequence that needs a new block and finds
none preempts the newest other running sequence (its blocks are freed and it is recomputed later from its tokens,
which it keeps, so nothing is lost or truncated); with no running sequence to preempt, the caches of paused (resumable)
or queued requests are dropped (they are recomputed on resume); as a last resort the sequence preempts itself.

Prompt sharing: `add(prompt, n=k)` prefills the prompt once; when its prefill completes the k samples share its
blocks by reference count, each drawing its first token from the same logits with its own seed (seed + i).
Whoever writes next into a shared, partly filled block copies it first (copy-on-write).
"""
from __future__ import annotations

import math
import numbers
import random
from collections import deque
from dataclasses import dataclass

import torch

from .. import cpu
from .decode_graph import CompiledDecode
from .kv_cache import BlockManager, CacheStep, PagedKVCache
from .sampling import Rows, SamplingParams, sample

_STOP_WINDOW_PER_CHAR = 4  # a character can take up to 4 byte-level tokens


@dataclass
class Output:
    """A request that finished or paused in this step: the tokens (and their logprobs) generated since its last
    add/extend, and why it stopped: "stop" (stop token or string, included), "length" (max_new_tokens) or "budget"
    (max_total_tokens or the sampler's max_seq_len)."""
    request_id: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class _Sequence:
    """One sample's state. tokens = prompt + everything generated or forced; the first num_cached have their
    k/v in `blocks` (always ceil(num_cached / block_size) of them)."""

    __slots__ = ("id", "params", "seed", "resumable", "budget", "tokens", "turn_start", "logprobs", "num_cached",
                 "blocks", "row", "status", "forks", "stop_ids")

    def __init__(self, request_id, tokens, params, seed, resumable, budget, stop_ids):
        self.id = request_id
        self.tokens = tokens
        self.turn_start = len(tokens)
        self.logprobs: list[float] = []
        self.num_cached = 0
        self.blocks: list[int] = []
        self.row: int | None = None
        self.status = "waiting"  # waiting | running | paused | finished
        self.forks: list[_Sequence] = []  # samples that share this one's prefill (until it completes)
        self.params, self.seed, self.resumable, self.budget, self.stop_ids = params, seed, resumable, budget, stop_ids


class Sampler:
    """Continuous-batching sampler over a `Qwen3` model.

    Cache size: `max_cache_tokens`, or `cache_bytes` (default 1 GiB on CPU, 60% of free memory on CUDA).
    `max_seq_len` (default: the model's max_position_embeddings, capped by the cache) bounds prompt + generated
    tokens of one sequence. `max_batch_tokens` bounds the tokens of one forward pass; `max_num_seqs` the running
    sequences. `stop_token_ids` is the default for requests whose params leave it None (default: the model
    config's eos_token_id, which is <|im_end|> in Qwen3 checkpoints); `decode` (ids -> str) enables stop strings.
    `seed` seeds the seeds of unseeded requests. `compile` ("default", or "reduce-overhead" for CUDA graphs) runs
    steps in which every sequence decodes one token through a torch.compile graph (decode_graph.py); the first
    such step of each shape class compiles it (tens of seconds on CPU), other steps run eagerly. On CPU the
    constructor tunes glibc malloc process-wide (see `litere.cpu.retain_freed_memory`).
    """

    def __init__(self, model, *, max_cache_tokens: int | None = None, cache_bytes: int | None = None,
                 block_size: int = 16, max_batch_tokens: int = 2048, max_num_seqs: int = 256,
                 max_seq_len: int | None = None, stop_token_ids=None, decode=None, seed: int | None = None,
                 compile: str | None = None):
        config = model.config
        weight = model.model.embed_tokens.weight
        self.model, self.device, self.vocab_size = model, weight.device, config.vocab_size
        for name, value in (("block_size", block_size), ("max_batch_tokens", max_batch_tokens),
                            ("max_num_seqs", max_num_seqs)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Sampler {name}={value!r}: must be a positive integer")
        if max_batch_tokens < max_num_seqs:
            raise ValueError(f"Sampler max_batch_tokens={max_batch_tokens} must be >= max_num_seqs={max_num_seqs} "
                             "(every running sequence decodes one token per step)")
        per_token = PagedKVCache.bytes_per_token(config.num_hidden_layers, config.num_key_value_heads,
                                                 config.head_dim, weight.dtype)
        if max_cache_tokens is not None and cache_bytes is not None:
            raise ValueError("Sampler: give max_cache_tokens or cache_bytes, not both")
        if max_cache_tokens is None:
            if cache_bytes is None:
                cache_bytes = (int(0.6 * torch.cuda.mem_get_info(self.device)[0]) if self.device.type == "cuda"
                               else 1 << 30)
            max_cache_tokens = cache_bytes // per_token
        num_blocks = max_cache_tokens // block_size
        if num_blocks < 1:
            raise ValueError(f"Sampler cache of {max_cache_tokens} tokens holds no block of {block_size} tokens")
        self.block_size, self.max_batch_tokens, self.max_num_seqs = block_size, max_batch_tokens, max_num_seqs
        self.max_seq_len = min(max_seq_len or config.max_position_embeddings, num_blocks * block_size)
        if stop_token_ids is None:  # Qwen3 checkpoints name <|im_end|> as eos_token_id
            eos = config.eos_token_id
            stop_token_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.stop_token_ids = self._token_list(stop_token_ids, "Sampler stop_token_ids", allow_empty=True)
        self.decode = decode
        self._seed_rng = random.Random(seed)

        if self.device.type == "cpu":
            cpu.retain_freed_memory()
        with torch.inference_mode():
            self.cache = PagedKVCache(config.num_hidden_layers, num_blocks, block_size, config.num_key_value_heads,
                                      config.head_dim, weight.dtype, self.device)
            max_blocks = math.ceil(self.max_seq_len / block_size)
            self.block_table = torch.zeros(max_num_seqs, max_blocks, dtype=torch.int32, device=self.device)
        self.blocks = BlockManager(num_blocks)
        self._compiled = None if compile is None else CompiledDecode(model, self.cache, compile)
        self._seen: torch.Tensor | None = None  # (max_num_seqs, 2, vocab) prompt/output token masks for penalties

        self._requests: dict[int, _Sequence] = {}
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # in admission order: the last one is preempted first
        self._paused: dict[int, _Sequence] = {}  # in pause order
        self._free_rows = list(range(max_num_seqs - 1, -1, -1))
        self._next_id = 0
        self._table_writes: list[tuple[int, int, int]] = []  # (row, column, block) to apply before the forward
        self._block_copies: list[tuple[int, int]] = []  # (src, dst) copy-on-write before the forward

    # --- public API -----------------------------------------------------------------------------------------
    def add(self, prompt_ids, params: SamplingParams | None = None, *, n: int = 1,
            resumable: bool = False) -> list[int]:
        """Queue `n` samples of one prompt (prefilled once); returns their request ids. A resumable request pauses
        when a turn finishes, keeping its cache, until `extend` resumes it or `release` frees it."""
        params = params or SamplingParams()
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.max_num_seqs:
            raise ValueError(f"add: n={n!r} must be an integer in [1, max_num_seqs={self.max_num_seqs}]")
        tokens = self._token_list(prompt_ids, "add: prompt_ids")
        stop_ids = self._check_params(params, "add")
        budget = self._budget(params)
        if len(tokens) >= budget:
            raise ValueError(f"add: prompt of {len(tokens)} tokens leaves no room to generate under the budget of "
                             f"{budget} tokens ({self._budget_source(params)})")
        seqs = []
        for i in range(n):
            seed = params.seed + i if params.seed is not None else self._seed_rng.getrandbits(63)
            seq = _Sequence(self._next_id, list(tokens), params, seed, resumable, budget, stop_ids)
            self._next_id += 1
            self._requests[seq.id] = seq
            seqs.append(seq)
        seqs[0].forks = seqs[1:]
        self._waiting.append(seqs[0])
        return [s.id for s in seqs]

    def extend(self, request_id: int, token_ids, params: SamplingParams | None = None):
        """Append forced tokens to a paused request and resume generating (with `params`, default the last ones).

        Only the new tokens are prefilled; the cached prefix is reused.
        """
        seq = self._requests.get(request_id)
        if seq is None or seq.status != "paused":
            state = "unknown" if seq is None else seq.status
            raise ValueError(f"extend: request {request_id} is {state}; only a paused request (added with "
                             "resumable=True and finished) can be extended")
        forced = self._token_list(token_ids, "extend: token_ids", allow_empty=True)
        params = params or seq.params
        stop_ids = self._check_params(params, "extend")
        budget = self._budget(params)
        if len(seq.tokens) + len(forced) >= budget:
            raise ValueError(f"extend: request {request_id} has {len(seq.tokens)} tokens; {len(forced)} more leave "
                             f"no room to generate under the budget of {budget} tokens "
                             f"({self._budget_source(params)})")
        del self._paused[request_id]
        seq.tokens.extend(forced)
        seq.turn_start = len(seq.tokens)
        seq.logprobs = []
        seq.params, seq.budget, seq.stop_ids, seq.status = params, budget, stop_ids, "waiting"
        self._waiting.append(seq)

    def release(self, request_id: int):
        """Forget a request: a paused one frees its cache; a queued or running one is cancelled without output."""
        seq = self._requests.pop(request_id, None)
        if seq is None:
            raise ValueError(f"release: unknown request {request_id}")
        self._cancel(seq)
        seq.status = "finished"

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None, *, n: int = 1
                 ) -> list[Output]:
        """Run prompts to completion; returns one Output per sample, prompt-major, in input order."""
        if self.has_work():
            raise RuntimeError("generate: the sampler already has queued or running requests; drive it with "
                               "add()/step() instead")
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"generate: {len(params_list)} params for {len(prompts)} prompts")
        ids = [i for p, sp in zip(prompts, params_list) for i in self.add(p, sp, n=n)]
        done = {}
        while self.has_work():
            for out in self.step():
                done[out.request_id] = out
        return [done[i] for i in ids]

    @torch.inference_mode()
    def step(self) -> list[Output]:
        """One scheduler step: a packed forward over decode tokens and prefill chunks, then sampling."""
        batch = self._schedule()
        if not batch:
            if self.has_work():
                raise RuntimeError("Sampler: queued requests could not be scheduled (scheduler invariant broken)")
            return []
        hidden, sample_at = self._forward(batch)
        samplers: list[tuple[int, _Sequence]] = []
        for (seq, n), index in zip(batch, sample_at):
            seq.num_cached += n
            if index is None:
                continue
            samplers.append((index, seq))
            for fork in seq.forks:
                self._fork(seq, fork)
                samplers.append((index, fork))
            seq.forks = []
        if not samplers:
            return []
        tokens, logprobs = self._sample(hidden, samplers)
        return self._advance(samplers, tokens, logprobs)

    # --- validation -----------------------------------------------------------------------------------------
    def _token_list(self, ids, what: str, allow_empty: bool = False) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.dtype.is_floating_point:
                raise ValueError(f"{what}: expected a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        try:
            tokens = list(ids)
        except TypeError:
            raise ValueError(f"{what}: expected a sequence of token ids, got {type(ids).__name__}") from None
        if not tokens and not allow_empty:
            raise ValueError(f"{what}: empty")
        bad = [t for t in tokens
               if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"{what}: token ids {bad[:5]} are not integers in [0, vocab_size={self.vocab_size})")
        return [int(t) for t in tokens]

    def _check_params(self, params: SamplingParams, where: str) -> frozenset[int]:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"{where}: params must be SamplingParams, got {type(params).__name__}")
        if params.stop_strings and self.decode is None:
            raise ValueError(f"{where}: stop_strings {params.stop_strings} need Sampler(decode=...) to read text")
        stop_ids = self.stop_token_ids if params.stop_token_ids is None else params.stop_token_ids
        return frozenset(self._token_list(stop_ids, f"{where}: stop_token_ids", allow_empty=True))

    def _budget(self, params: SamplingParams) -> int:
        return min(params.max_total_tokens or self.max_seq_len, self.max_seq_len)

    def _budget_source(self, params: SamplingParams) -> str:
        if params.max_total_tokens is not None and params.max_total_tokens <= self.max_seq_len:
            return "SamplingParams.max_total_tokens"
        return "Sampler max_seq_len, bounded by the model's max_position_embeddings and the cache size"

    # --- scheduling -----------------------------------------------------------------------------------------
    def _schedule(self) -> list[tuple[_Sequence, int]]:
        """Pick this step's work: (sequence, number of its uncached tokens to process)."""
        batch: list[tuple[_Sequence, int]] = []
        scheduled: set[int] = set()
        tokens_left = self.max_batch_tokens
        decoding = [s for s in self._running if len(s.tokens) - s.num_cached == 1]
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
        for seq in [s for s in self._running if s.id not in scheduled]:  # prefills in progress
            if tokens_left == 0:
                break
            if seq.status != "running":  # preempted to make room for an older one
                continue
            n = self._fit(seq, min(len(seq.tokens) - seq.num_cached, tokens_left), not batch, scheduled)
            if n:
                batch.append((seq, n))
                scheduled.add(seq.id)
                tokens_left -= n
        while self._waiting and tokens_left:
            seq = self._waiting[0]
            if len(self._free_rows) < 1 + len(seq.forks):
                break
            n = self._fit(seq, min(len(seq.tokens) - seq.num_cached, tokens_left), not batch, scheduled)
            if not n:
                break
            self._waiting.remove(seq)  # not popleft: making room may have queued preempted sequences before it
            self._admit(seq)
            batch.append((seq, n))
            scheduled.add(seq.id)
            tokens_left -= n
        return batch

    def _blocks_needed(self, seq: _Sequence, n: int) -> int:
        new = math.ceil((seq.num_cached + n) / self.block_size) - len(seq.blocks)
        return new + self._needs_copy(seq)

    def _needs_copy(self, seq: _Sequence) -> bool:
        """The next token lands in a partly filled block that other sequences share."""
        return seq.num_cached % self.block_size != 0 and self.blocks.refcount[seq.blocks[-1]] > 1

    def _fit(self, seq: _Sequence, n: int, stalled: bool, scheduled: set[int]) -> int:
        """Grow `seq` for up to n tokens within the free blocks (making room only when nothing else can run)."""
        def capacity():
            usable = len(seq.blocks) + self.blocks.num_free - self._needs_copy(seq)
            return min(n, usable * self.block_size - seq.num_cached)

        if capacity() <= 0 and stalled:
            self._make_room(seq, self._blocks_needed(seq, min(n, self.block_size)), scheduled)
        n = max(capacity(), 0)
        if n:
            self._grow(seq, n)
        return n

    def _make_room(self, seq: _Sequence, needed: int, scheduled: set[int]) -> bool:
        """Free blocks for `seq`: preempt the newest other unscheduled running sequence, else drop idle caches."""
        while self.blocks.num_free < needed:
            victim = next((s for s in reversed(self._running) if s is not seq and s.id not in scheduled), None)
            if victim is not None:
                self._preempt(victim)
                continue
            idle = [s for s in self._paused.values() if s.blocks]
            idle += [s for s in reversed(self._waiting) if s.blocks and s is not seq]
            if not idle:
                return False
            self._drop_cache(idle[0])
        return True

    def _grow(self, seq: _Sequence, n: int):
        if self._needs_copy(seq):
            src, dst = seq.blocks[-1], self.blocks.allocate(seq.blocks[-2] if len(seq.blocks) > 1 else None)
            self._block_copies.append((src, dst))
            self.blocks.release([src])
            seq.blocks[-1] = dst
            if seq.row is not None:  # a queued sequence gets its whole row written when admitted
                self._table_writes.append((seq.row, len(seq.blocks) - 1, dst))
        for _ in range(math.ceil((seq.num_cached + n) / self.block_size) - len(seq.blocks)):
            block = self.blocks.allocate(seq.blocks[-1] if seq.blocks else None)
            seq.blocks.append(block)
            if seq.row is not None:
                self._table_writes.append((seq.row, len(seq.blocks) - 1, block))

    def _admit(self, seq: _Sequence):
        for s in [seq, *seq.forks]:
            s.row = self._free_rows.pop()
        seq.status = "running"
        self._running.append(seq)
        self._write_row(seq)

    def _write_row(self, seq: _Sequence):
        self._table_writes.extend((seq.row, j, b) for j, b in enumerate(seq.blocks))
        if seq.params.uses_penalties:
            seen = self._penalty_masks()
            seen[seq.row].zero_()
            seen[seq.row, 0, seq.tokens[:seq.turn_start]] = True
            seen[seq.row, 1, seq.tokens[seq.turn_start:]] = True

    def _fork(self, leader: _Sequence, fork: _Sequence):
        fork.blocks = list(leader.blocks)
        self.blocks.share(fork.blocks)
        fork.num_cached = leader.num_cached
        fork.status = "running"
        self._running.append(fork)
        self._write_row(fork)

    def _preempt(self, seq: _Sequence):
        """Free a running sequence's cache and rows; it waits at the head of the queue to be recomputed."""
        self._running.remove(seq)
        self._free_rows_of(seq)
        self._drop_cache(seq)
        seq.status = "waiting"
        self._waiting.appendleft(seq)

    def _cancel(self, seq: _Sequence):
        """Take a paused, queued or running sequence out of the scheduler and free its cache."""
        if seq.status == "paused":
            del self._paused[seq.id]
        elif seq in self._waiting or seq in self._running:
            queue = self._waiting if seq.status == "waiting" else self._running
            position = queue.index(seq)
            if seq.forks:  # its first unforked sample takes over the shared prefill and the queue place
                heir = seq.forks[0]
                heir.forks, heir.status = seq.forks[1:], seq.status
                heir.blocks, heir.num_cached, seq.blocks, seq.num_cached = seq.blocks, seq.num_cached, [], 0
                queue[position] = heir
                if heir.row is not None:
                    self._write_row(heir)
            else:
                del queue[position]
            seq.forks = []
        else:  # an unforked sample: its leader carries on without it
            leader = next(s for s in [*self._waiting, *self._running] if seq in s.forks)
            leader.forks.remove(seq)
        self._free_rows_of(seq)
        self._drop_cache(seq)

    def _free_rows_of(self, seq: _Sequence):
        for s in [seq, *seq.forks]:
            if s.row is not None:
                self._free_rows.append(s.row)
                s.row = None

    def _drop_cache(self, seq: _Sequence):
        self.blocks.release(seq.blocks)
        seq.blocks, seq.num_cached = [], 0

    def _penalty_masks(self) -> torch.Tensor:
        if self._seen is None:
            self._seen = torch.zeros(self.max_num_seqs, 2, self.vocab_size, dtype=torch.bool, device=self.device)
        return self._seen

    # --- the forward pass -----------------------------------------------------------------------------------
    def _forward(self, batch: list[tuple[_Sequence, int]]):
        """Run the model over the batch; returns hidden states and, per sequence, the index of the token whose
        logits draw its next token (None while its prefill is incomplete)."""
        device, bs = self.device, self.block_size
        if self._table_writes:
            rows, cols, blocks = zip(*self._table_writes)
            self.block_table[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = torch.tensor(
                blocks, dtype=torch.int32, device=device)
            self._table_writes.clear()
        if self._block_copies:
            src, dst = zip(*self._block_copies)
            self.cache.copy_blocks(torch.tensor(src, device=device), torch.tensor(dst, device=device))
            self._block_copies.clear()

        ids, positions, slots, cu_seqlens, seqlens_k, sample_at = [], [], [], [0], [], []
        for seq, n in batch:
            start, stop = seq.num_cached, seq.num_cached + n
            ids += seq.tokens[start:stop]
            if n == 1:
                positions.append(start)
                slots.append(seq.blocks[start // bs] * bs + start % bs)
            else:
                positions += range(start, stop)
                slots += [seq.blocks[p // bs] * bs + p % bs for p in range(start, stop)]
            cu_seqlens.append(cu_seqlens[-1] + n)
            seqlens_k.append(stop)
            sample_at.append(cu_seqlens[-1] - 1 if stop == len(seq.tokens) else None)
        total = len(ids)
        # two host-to-device transfers: the int64 token data and the int32 layout
        longs = torch.tensor(ids + positions + slots + [seq.row for seq, _ in batch]).to(device, non_blocking=True)
        ints = torch.tensor(cu_seqlens + seqlens_k, dtype=torch.int32).to(device, non_blocking=True)
        rows = longs[3 * total:]
        table = self.block_table[rows, :math.ceil(max(seqlens_k) / bs)]
        ids_t, positions_t, slots_t = longs[:total], longs[total:2 * total], longs[2 * total:3 * total]
        cu_seqlens_t, seqlens_t = ints[:len(batch) + 1], ints[len(batch) + 1:]
        if self._compiled is not None and total == len(batch):  # every sequence decodes one token
            return self._compiled(ids_t, positions_t, slots_t, table, seqlens_t), sample_at
        step = CacheStep(self.cache, slots_t, table, cu_seqlens_t, seqlens_t, max(n for _, n in batch))
        return self.model(ids_t, positions_t, cache=step), sample_at

    def _sample(self, hidden: torch.Tensor, samplers: list[tuple[int, _Sequence]]):
        index = [i for i, _ in samplers]
        if index != list(range(len(hidden))):  # a pure decode step samples every row in order
            hidden = hidden[torch.tensor(index, device=self.device)]
        logits = self.model.logits(hidden)
        seqs = [s for _, s in samplers]
        seen_prompt = seen_output = None
        if any(s.params.uses_penalties for s in seqs):
            seen = self._penalty_masks()[torch.tensor([s.row for s in seqs], device=self.device)]
            seen_prompt, seen_output = seen[:, 0], seen[:, 1]
        rows = Rows.build([s.params for s in seqs], [s.seed for s in seqs], [len(s.tokens) for s in seqs],
                          self.vocab_size, self.device, seen_prompt, seen_output)
        tokens, logprobs = sample(logits, rows)
        if seen_prompt is not None:
            penalised = [i for i, s in enumerate(seqs) if s.params.uses_penalties]
            pick = torch.tensor(penalised, device=self.device)
            rows_t = torch.tensor([seqs[i].row for i in penalised], device=self.device)
            self._seen[rows_t, 1, tokens[pick]] = True
        return tokens.tolist(), logprobs.tolist()

    def _advance(self, samplers, tokens: list[int], logprobs: list[float]) -> list[Output]:
        outputs = []
        for (_, seq), token, logprob in zip(samplers, tokens, logprobs):
            seq.tokens.append(token)
            seq.logprobs.append(logprob)
            reason = self._finish_reason(seq, token)
            if reason is None:
                continue
            outputs.append(Output(seq.id, seq.tokens[seq.turn_start:], list(seq.logprobs), reason))
            self._running.remove(seq)
            self._free_rows_of(seq)
            if seq.resumable:
                seq.status = "paused"
                self._paused[seq.id] = seq
            else:
                seq.status = "finished"
                self._drop_cache(seq)
                del self._requests[seq.id]
        return outputs

    def _finish_reason(self, seq: _Sequence, token: int) -> str | None:
        if token in seq.stop_ids or self._hit_stop_string(seq):
            return "stop"
        if len(seq.tokens) - seq.turn_start >= seq.params.max_new_tokens:
            return "length"
        if len(seq.tokens) >= seq.budget:
            return "budget"
        return None

    def _hit_stop_string(self, seq: _Sequence) -> bool:
        stops = seq.params.stop_strings
        if not stops:
            return False
        window = _STOP_WINDOW_PER_CHAR * max(len(s) for s in stops)
        text = self.decode(seq.tokens[max(seq.turn_start, len(seq.tokens) - window):])
        return any(s in text for s in stops)
