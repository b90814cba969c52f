"""Paged KV cache: one tensor allocated up front, a block manager with reference counts, and the per-step view
the model's attention layers write to and read from."""
from __future__ import annotations

import torch

import kernels


class BlockManager:
    """Free list and reference counts of the cache blocks; a block shared by several sequences has count > 1."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.refcount = [0] * num_blocks
        self.free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> int:
        block = self.free.pop()
        self.refcount[block] = 1
        return block

    def share(self, blocks: list[int]):
        for b in blocks:
            self.refcount[b] += 1

    def release(self, blocks: list[int]):
        for b in blocks:
            self.refcount[b] -= 1
            if self.refcount[b] == 0:
                self.free.append(b)


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


class CacheStep:
    """The cache layout of one forward pass: where each new token's k/v go and which blocks each sequence reads.

    `Qwen3.forward(..., cache=step)` calls `attend` once per layer with the new tokens' q/k/v.
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
