"""Paged KV cache: one tensor allocated up front, a block manager with reference counts, and the per-step view
the model's attention layers write to and read from."""
from __future__ import annotations

import heapq

import torch

import kernels


class BlockManager:
    """Reference counts of the cache blocks (a block shared by several sequences has count > 1) and the free blocks,
    kept as runs of consecutive ids.

    On CPU, attention reads a sequence's keys in place when its blocks are consecutive (kernels.reference), so
    allocation keeps each sequence's blocks together: `allocate(after=b)` returns b + 1 when that block is free, and
    a block that starts a new run is taken from the middle of the largest free run, leaving room on both sides for
    the sequences around it to grow.
    """

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.refcount = [0] * num_blocks
        self.num_free = num_blocks
        self._runs = {0: num_blocks}  # start -> length of each free run
        self._run_ending = {num_blocks: 0}  # end (exclusive) -> start of each free run
        self._largest = [(-num_blocks, 0)]  # heap of (-length, start); entries of changed runs are skipped

    def allocate(self, after: int | None = None) -> int:
        if self.num_free == 0:
            raise RuntimeError("BlockManager: no free block (the scheduler must make room first)")
        block = None if after is None else after + 1
        if block in self._runs:  # free: a free block right after a used one starts a run
            start, length = block, self._runs[block]
        else:
            start, length = self._largest_run()
            block = start if start == 0 else start + length // 2  # nothing before block 0 needs room
        self._take(block, start, length)
        self.refcount[block] = 1
        return block

    def share(self, blocks: list[int]):
        for b in blocks:
            self.refcount[b] += 1

    def release(self, blocks: list[int]):
        for b in blocks:
            self.refcount[b] -= 1
            if self.refcount[b] == 0:
                self._give_back(b)

    def _largest_run(self) -> tuple[int, int]:
        while True:
            length, start = self._largest[0]
            if self._runs.get(start) == -length:
                return start, -length
            heapq.heappop(self._largest)

    def _add_run(self, start: int, length: int):
        if length > 0:
            self._runs[start] = length
            self._run_ending[start + length] = start
            heapq.heappush(self._largest, (-length, start))

    def _take(self, block: int, start: int, length: int):
        """Remove a free block from its run [start, start + length)."""
        del self._runs[start], self._run_ending[start + length]
        self._add_run(start, block - start)
        self._add_run(block + 1, start + length - block - 1)
        self.num_free -= 1
        if len(self._largest) > 4 * len(self._runs) + 64:  # drop the skipped entries now and then
            self._largest = [(-n, s) for s, n in self._runs.items()]
            heapq.heapify(self._largest)

    def _give_back(self, block: int):
        start, end = block, block + 1
        left = self._run_ending.pop(block, None)
        if left is not None:
            start = left
            del self._runs[left]
        right = self._runs.pop(end, None)
        if right is not None:
            del self._run_ending[end + right]
            end += right
        self._add_run(start, end - start)
        self.num_free += 1


class PagedKVCache:
    """k and v of every layer in one tensor (layers, 2, num_blocks, block_size, kv_heads, head_dim)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device):
        self.block_size = block_size
        # zeros, not empty: masked-out slots are multiplied by zero weights, and 0 * NaN garbage would be NaN
        self.data = torch.zeros(num_layers, 2, num_blocks, block_size, kv_heads, head_dim, dtype=dtype,
                                device=device)
        self.keys = [self.data[i, 0] for i in range(num_layers)]
        self.values = [self.data[i, 1] for i in range(num_layers)]
        self.key_slots = [k.view(-1, kv_heads, head_dim) for k in self.keys]
        self.value_slots = [v.view(-1, kv_heads, head_dim) for v in self.values]

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def copy_blocks(self, src: torch.Tensor, dst: torch.Tensor):
        """Copy whole blocks (all layers, k and v) from src ids to dst ids (copy-on-write of shared blocks)."""
        self.data[:, :, dst] = self.data[:, :, src]

    def write_all_layers(self, slots: torch.Tensor, kv: torch.Tensor):
        """Store the k/v of new tokens, kv (layers, 2, tokens, kv_heads, head_dim), at their slots in every layer."""
        layers, _, blocks, block_size = self.data.shape[:4]
        self.data.view(layers, 2, blocks * block_size, *self.data.shape[4:]).index_copy_(2, slots, kv)


class CacheStep:
    """The cache layout of one forward pass: where each new token's k/v go and which blocks each sequence reads.

    An `AttentionCache` (litere.model): `Qwen3.forward(..., cache=step)` calls `attend` once per layer with the new
    tokens' q/k/v, which writes their k/v into the paged cache and attends over it.
    """

    def __init__(self, cache: PagedKVCache, slots: torch.Tensor, block_table: torch.Tensor,
                 cu_seqlens_q: torch.Tensor, seqlens_k: torch.Tensor, max_seqlen_q: int):
        self.cache = cache
        self.slots = slots
        self.block_table = block_table
        self.cu_seqlens_q = cu_seqlens_q
        self.seqlens_k = seqlens_k
        self.max_seqlen_q = max_seqlen_q

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        cache.key_slots[layer].index_copy_(0, self.slots, k)
        cache.value_slots[layer].index_copy_(0, self.slots, v)
        return kernels.paged_attention(q, cache.keys[layer], cache.values[layer], self.block_table,
                                       self.cu_seqlens_q, self.seqlens_k, self.max_seqlen_q)
