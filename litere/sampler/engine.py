"""KV-cached sampler with continuous batching: token ids in, token ids + per-token logprobs out.

This file holds the public API (`Sampler`: add, extend, release, generate, step) and the device side of a step:
`step()` asks the scheduler (scheduler.py) for this step's work, a mix of decode tokens and prefill chunks, runs one
packed forward pass over it, samples the next token of every sequence whose uncached tokens are all computed
(sampling.py), and hands finished turns back as `Output`s.

The model takes the flat token stream; a `CacheStep` (kv_cache.py) tells each attention layer where the tokens' k/v
go in the paged cache and which blocks each sequence reads, so prefill and decode share one forward. With a compiled
decode step (decode_graph.py), the sequences that compute one token run through the graph instead, and the
prefill chunks of the same step (prompts, tool responses) run eagerly in a forward of their own.
"""
from __future__ import annotations

import math
import numbers
import random
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import cpu
from .decode_graph import CompiledDecode, CompiledDecodeMismatch
from .kv_cache import CacheStep, PagedKVCache
from .sampling import Rows, SamplingParams, sample
from .scheduler import Scheduler, Sequence

_STOP_WINDOW_PER_CHAR = 4  # a character can take up to 4 byte-level tokens


class _StepInputs(NamedTuple):
    ids: torch.Tensor          # (T,) the uncached tokens of the batch, packed by entry
    positions: torch.Tensor    # (T,)
    slots: torch.Tensor        # (T,) where their k/v go in the cache
    block_table: torch.Tensor  # (B, blocks) the entries' rows of the block table
    cu_seqlens: torch.Tensor   # (B + 1,) int32 offsets of the entries' tokens
    seqlens: torch.Tensor      # (B,) int32 cached + new tokens per entry


def _in_batch_order(hidden: torch.Tensor, entries: list[int]) -> torch.Tensor:
    """Rows given for batch entries `entries` (a permutation of 0..B-1), reordered to 0..B-1."""
    if entries == list(range(len(entries))):
        return hidden
    order = [0] * len(entries)
    for row, entry in enumerate(entries):
        order[entry] = row
    return hidden[torch.tensor(order, device=hidden.device)]


@dataclass
class Output:
    """A request that finished or paused in this step: the tokens (and their logprobs) generated since its last
    add/extend, and why it stopped: "stop" (stop token or string, included), "length" (max_new_tokens) or "budget"
    (max_total_tokens or the sampler's max_seq_len)."""
    request_id: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class Sampler:
    """Continuous-batching sampler over a `Qwen3` model.

    Cache size: `max_cache_tokens`, or `cache_bytes` (default 1 GiB on CPU, 60% of free memory on CUDA).
    `max_seq_len` (default: the model's max_position_embeddings, capped by the cache) bounds prompt + generated
    tokens of one sequence. `max_batch_tokens` bounds the tokens of one forward pass; `max_num_seqs` the running
    sequences. `stop_token_ids` is the default for requests whose params leave it None (default: the model
    config's eos_token_id, which is <|im_end|> in Qwen3 checkpoints); `decode` (ids -> str) enables stop strings.
    `seed` seeds the seeds of unseeded requests. `compile` ("default", or "reduce-overhead" for CUDA graphs) runs
    the sequences that compute one token in a step through a torch.compile graph (decode_graph.py), prefill chunks
    beside them eagerly; the first use of each shape class compiles it (BENCHMARKS.md lists compile times). On CPU the
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
        self.scheduler = Scheduler(num_blocks, block_size, max_num_seqs, max_batch_tokens)
        self.blocks = self.scheduler.blocks  # the cache's block manager: free blocks, reference counts
        self._compiled = None if compile is None else CompiledDecode(model, self.cache, compile)
        self._seen_tokens: torch.Tensor | None = None  # (max_num_seqs, 2, vocab) prompt/output masks for penalties
        self._next_id = 0

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
        samples = []
        for i in range(n):
            seed = params.seed + i if params.seed is not None else self._seed_rng.getrandbits(63)
            samples.append(Sequence(self._next_id, list(tokens), params, seed, resumable, budget, stop_ids))
            self._next_id += 1
        self.scheduler.add(samples)
        return [s.id for s in samples]

    def extend(self, request_id: int, token_ids, params: SamplingParams | None = None):
        """Append forced tokens to a paused request and resume generating (with `params`, default the last ones).

        Only the new tokens are prefilled; the cached prefix is reused.
        """
        seq = self.scheduler.requests.get(request_id)
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
        seq.tokens.extend(forced)
        seq.turn_start = len(seq.tokens)
        seq.logprobs = []
        seq.params, seq.budget, seq.stop_ids = params, budget, stop_ids
        self.scheduler.resume(seq)

    def release(self, request_id: int):
        """Forget a request: a paused one frees its cache; a queued or running one is cancelled without output."""
        seq = self.scheduler.requests.get(request_id)
        if seq is None:
            raise ValueError(f"release: unknown request {request_id}")
        self.scheduler.release(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

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
        batch = self.scheduler.schedule()
        if not batch:
            if self.has_work():
                raise RuntimeError("Sampler: queued requests could not be scheduled (scheduler invariant broken)")
            return []
        hidden = self._forward(batch)
        # (row of hidden, sequence) of every sequence that draws a token now; forks share their leader's row
        to_sample = [(row, s) for row, (seq, n) in enumerate(batch) for s in self.scheduler.computed(seq, n)]
        if not to_sample:
            return []
        tokens, logprobs = self._sample(hidden, to_sample)
        return self._advance(to_sample, tokens, logprobs)

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

    # --- the forward pass -----------------------------------------------------------------------------------
    def _forward(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Hidden states of the last token of each batch entry, (len(batch), hidden), in batch order.

        With a compiled decode step, the one-token entries (the decoding sequences) run through the graph even when
        other entries prefill: those run eagerly in a forward of their own beside it, so that a tool response or a
        prompt arriving does not send the whole decode batch down the eager path. A graph whose first result strays
        from the eager step's (decode_graph.py) is dropped, with a warning, and the sampler decodes eagerly from then
        on: the step is redone eagerly, as the graph wrote nothing to the cache.
        """
        self._apply_block_updates()
        if self._compiled is not None:
            try:
                return self._graph_and_eager_forward(batch)
            except CompiledDecodeMismatch as error:
                warnings.warn(f"{error}. This sampler decodes eagerly from now on.", RuntimeWarning, stacklevel=4)
                self._compiled = None
        return self._eager_forward(batch)

    def _graph_and_eager_forward(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor:
        single = [i for i, (_, n) in enumerate(batch) if n == 1]
        if len(single) == len(batch):
            return self._compiled_forward(batch)
        if not single:
            return self._eager_forward(batch)
        chunks = [i for i, (_, n) in enumerate(batch) if n > 1]
        hidden = torch.cat((self._compiled_forward([batch[i] for i in single]),
                            self._eager_forward([batch[i] for i in chunks])))
        return _in_batch_order(hidden, single + chunks)

    def _eager_forward(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor:
        inputs = self._inputs(batch)
        step = CacheStep(self.cache, inputs.slots, inputs.block_table, inputs.cu_seqlens, inputs.seqlens,
                         max(n for _, n in batch))
        hidden = self.model(inputs.ids, inputs.positions, cache=step)
        if len(hidden) == len(batch):
            return hidden
        return hidden.index_select(0, inputs.cu_seqlens[1:].long() - 1)

    def _compiled_forward(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor:
        inputs = self._inputs(batch)
        return self._compiled(inputs.ids, inputs.positions, inputs.slots, inputs.block_table, inputs.seqlens)

    def _inputs(self, batch: list[tuple[Sequence, int]]) -> _StepInputs:
        """The model's inputs for the uncached tokens of the batch, on the device."""
        device, bs = self.device, self.block_size
        ids, positions, slots, cu_seqlens, seqlens_k = [], [], [], [0], []
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
        total = len(ids)
        # two host-to-device transfers: the int64 token data and the int32 layout
        longs = torch.tensor(ids + positions + slots + [seq.row for seq, _ in batch]).to(device, non_blocking=True)
        ints = torch.tensor(cu_seqlens + seqlens_k, dtype=torch.int32).to(device, non_blocking=True)
        table = self.block_table[longs[3 * total:], :math.ceil(max(seqlens_k) / bs)]
        return _StepInputs(longs[:total], longs[total:2 * total], longs[2 * total:3 * total], table,
                           ints[:len(batch) + 1], ints[len(batch) + 1:])

    def _apply_block_updates(self):
        """Write the block-table entries and copy the shared blocks that the scheduler queued."""
        device, scheduler = self.device, self.scheduler
        if scheduler.row_resets:
            self.block_table[torch.tensor(scheduler.row_resets, device=device)] = 0
            scheduler.row_resets.clear()
        if scheduler.table_writes:
            rows, cols = zip(*scheduler.table_writes)
            self.block_table[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = torch.tensor(
                list(scheduler.table_writes.values()), dtype=torch.int32, device=device)
            scheduler.table_writes.clear()
        if scheduler.block_copies:
            src, dst = zip(*scheduler.block_copies)
            self.cache.copy_blocks(torch.tensor(src, device=device), torch.tensor(dst, device=device))
            scheduler.block_copies.clear()

    def _sample(self, hidden: torch.Tensor, to_sample: list[tuple[int, Sequence]]):
        """The next token of each sequence, drawn from the logits of its hidden row, and its logprob."""
        if self.scheduler.penalty_resets:
            self._reset_seen_tokens()
        indices = [i for i, _ in to_sample]
        if indices != list(range(len(hidden))):  # a pure decode step samples every row in order
            hidden = hidden[torch.tensor(indices, device=self.device)]
        logits = self.model.logits(hidden)
        seqs = [s for _, s in to_sample]
        seen_prompt = seen_output = None
        if any(s.params.uses_penalties for s in seqs):
            seen = self._seen_token_masks()[torch.tensor([s.row for s in seqs], device=self.device)]
            seen_prompt, seen_output = seen[:, 0], seen[:, 1]
        rows = Rows.build([s.params for s in seqs], [s.seed for s in seqs], [len(s.tokens) for s in seqs],
                          self.vocab_size, self.device, seen_prompt, seen_output)
        tokens, logprobs = sample(logits, rows)
        if seen_prompt is not None:
            penalised = [i for i, s in enumerate(seqs) if s.params.uses_penalties]
            pick = torch.tensor(penalised, device=self.device)
            seq_rows = torch.tensor([seqs[i].row for i in penalised], device=self.device)
            self._seen_tokens[seq_rows, 1, tokens[pick]] = True
        return tokens.tolist(), logprobs.tolist()

    def _seen_token_masks(self) -> torch.Tensor:
        if self._seen_tokens is None:
            self._seen_tokens = torch.zeros(self.max_num_seqs, 2, self.vocab_size, dtype=torch.bool,
                                            device=self.device)
        return self._seen_tokens

    def _reset_seen_tokens(self):
        """Rebuild the masks of the rows that penalised sequences took since the last sampling, in order."""
        seen = self._seen_token_masks()
        for row, prompt, output in self.scheduler.penalty_resets:
            seen[row].zero_()
            seen[row, 0, prompt] = True
            seen[row, 1, output] = True
        self.scheduler.penalty_resets.clear()

    def _advance(self, to_sample: list[tuple[int, Sequence]], tokens: list[int], logprobs: list[float]
                 ) -> list[Output]:
        """Append the drawn tokens; a sequence whose turn ends leaves the batch with an Output."""
        outputs = []
        for (_, seq), token, logprob in zip(to_sample, tokens, logprobs):
            seq.tokens.append(token)
            seq.logprobs.append(logprob)
            reason = self._finish_reason(seq, token)
            if reason is None:
                continue
            outputs.append(Output(seq.id, seq.tokens[seq.turn_start:], list(seq.logprobs), reason))
            self.scheduler.finish(seq)
        return outputs

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        if token in seq.stop_ids or self._hit_stop_string(seq):
            return "stop"
        if len(seq.tokens) - seq.turn_start >= seq.params.max_new_tokens:
            return "length"
        if len(seq.tokens) >= seq.budget:
            return "budget"
        return None

    def _hit_stop_string(self, seq: Sequence) -> bool:
        stops = seq.params.stop_strings
        if not stops:
            return False
        window = _STOP_WINDOW_PER_CHAR * max(len(s) for s in stops)
        text = self.decode(seq.tokens[max(seq.turn_start, len(seq.tokens) - window):])
        return any(s in text for s in stops)
