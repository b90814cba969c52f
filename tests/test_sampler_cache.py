"""Block allocation of the paged KV cache, the CPU attention paths over it (in place, runs merged, gathered), the
CPU argmax, and the caches' `AttentionCache` protocol."""
import random

import pytest
import torch

from kernels import reference
from litere.cpu import argmax
from litere.model import AttentionCache
from litere.sampler.decode_graph import DecodeAttention
from litere.sampler.kv_cache import BlockManager, CacheStep, PagedKVCache


def dense_attention(q, k_cache, v_cache, tables, lengths, new_tokens):
    """Per sequence, in float64: its keys in block order, query i at position length - n + i, causal."""
    outs, start = [], 0
    group = q.shape[1] // k_cache.shape[2]
    for table, length, n in zip(tables, lengths, new_tokens):
        k = torch.cat([k_cache[b] for b in table]).double()[:length].repeat_interleave(group, dim=1)
        v = torch.cat([v_cache[b] for b in table]).double()[:length].repeat_interleave(group, dim=1)
        qs = q[start:start + n].double()
        scores = torch.einsum("qhd,khd->hqk", qs, k) / q.shape[-1] ** 0.5
        visible = torch.arange(length)[None, :] <= torch.arange(length - n, length)[:, None]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs, v))
        start += n
    return torch.cat(outs)


def paged_case(lengths, new_tokens, layouts, block_size=4, heads=(4, 2), dim=16, seed=0):
    """Random cache contents; each sequence's blocks laid out as asked: "consecutive", "runs" (three runs) or
    "scattered" (every block on its own)."""
    gen = torch.Generator().manual_seed(seed)
    n_blocks = [-(-n // block_size) for n in lengths]
    free = list(range(4 * sum(n_blocks) + 8))
    random.Random(seed).shuffle(free)
    tables = []
    for count, layout in zip(n_blocks, layouts):
        if layout == "scattered":
            tables.append([free.pop() for _ in range(count)])
            continue
        pieces = 1 if layout == "consecutive" else min(3, count)
        base = 1000 * (len(tables) + 1)  # far from the scattered ids and from each other
        sizes = [count // pieces + (i < count % pieces) for i in range(pieces)]
        tables.append([base + 100 * p + j for p, size in enumerate(sizes) for j in range(size)])
    num_blocks = max(max(t) for t in tables) + 1
    k_cache = torch.randn(num_blocks, block_size, heads[1], dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, heads[1], dim, generator=gen)
    q = torch.randn(sum(new_tokens), heads[0], dim, generator=gen)
    width = max(map(len, tables))
    block_table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    cu = torch.tensor([0] + new_tokens).cumsum(0).to(torch.int32)
    args = (q, k_cache, v_cache, block_table, cu, torch.tensor(lengths, dtype=torch.int32), max(new_tokens))
    return args, dense_attention(q, k_cache, v_cache, tables, lengths, new_tokens)


CASES = {
    "decode, mixed layouts": ([37, 9, 64, 21], [1, 1, 1, 1], ["runs", "consecutive", "scattered", "runs"]),
    "one decoding sequence in runs": ([45], [1], ["runs"]),
    "prefill and extend": ([12, 30, 30, 7], [12, 5, 5, 1], ["consecutive", "runs", "consecutive", "scattered"]),
    "one extending sequence": ([40], [9], ["consecutive"]),
}


@pytest.mark.parametrize("in_place_bytes", [0, 1 << 40], ids=["in-place", "gathered"])
@pytest.mark.parametrize("case", CASES)
def test_paged_attention_paths_equal_dense_attention(monkeypatch, case, in_place_bytes):
    monkeypatch.setattr(reference, "_IN_PLACE_BYTES", in_place_bytes)
    monkeypatch.setattr(reference, "_GATHER_BYTES", 2048)  # several gathered chunks
    args, want = paged_case(*CASES[case])
    got = reference.paged_attention(*args)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_attention_plan_follows_layout_tensors_rewritten_in_place():
    args, want = paged_case([20, 33], [1, 1], ["consecutive", "runs"], seed=1)
    q, k_cache, v_cache, table, cu, lengths, max_q = args
    reference.paged_attention(*args)
    other, want_other = paged_case([33, 20], [1, 1], ["runs", "scattered"], seed=1)
    table.copy_(torch.nn.functional.pad(other[3], (0, table.shape[1] - other[3].shape[1])))
    lengths.copy_(other[5])
    got = reference.paged_attention(other[0], other[1], other[2], table, cu, lengths, max_q)
    torch.testing.assert_close(got.double(), want_other, atol=1e-5, rtol=1e-5)


def check_free_runs(manager: BlockManager):
    free = [b for b in range(manager.num_blocks) if manager.refcount[b] == 0]
    assert manager.num_free == len(free)
    runs = sorted(manager._runs.items())
    assert sorted(b for start, n in runs for b in range(start, start + n)) == free
    for (a, n), (b, _) in zip(runs, runs[1:]):
        assert a + n < b, "adjacent free runs were not merged"


def test_block_manager_keeps_free_runs_exact_under_random_use():
    rng = random.Random(0)
    for num_blocks in (1, 7, 50):
        manager, held = BlockManager(num_blocks), []
        for _ in range(300):
            if held and (manager.num_free == 0 or rng.random() < 0.45):
                manager.release([held.pop(rng.randrange(len(held)))])
            else:
                after = rng.choice(held) if held and rng.random() < 0.5 else None
                held.append(manager.allocate(after))
                assert manager.refcount[held[-1]] == 1
            check_free_runs(manager)
        manager.release(held)
        assert manager.num_free == num_blocks and list(manager._runs.items()) == [(0, num_blocks)]
    full = BlockManager(1)
    full.allocate()
    for manager in (full, BlockManager(0)):
        with pytest.raises(RuntimeError, match="no free block"):
            manager.allocate()


def test_sequences_growing_side_by_side_keep_their_blocks_consecutive():
    """16 sequences admitted together, then each grows a block at a time in turn: no sequence is fragmented."""
    manager = BlockManager(16 * 12)
    seqs = [[manager.allocate()] for _ in range(16)]
    for _ in range(11):
        for blocks in seqs:
            blocks.append(manager.allocate(after=blocks[-1]))
    for blocks in seqs:
        assert blocks == list(range(blocks[0], blocks[0] + 12))
    assert manager.num_free == 0


def test_a_row_taken_by_another_sequence_keeps_no_blocks_of_the_earlier_one():
    """The compiled decode step reads every row up to the batch's widest; stale block ids would send those
    (masked) reads all over the cache, so a row is cleared to block 0 past its new sequence's blocks."""
    from litere.sampler import Sampler, SamplingParams
    from model_utils import random_model, small_config

    sampler = Sampler(random_model(small_config()), max_cache_tokens=512, block_size=4, max_num_seqs=1)
    params = SamplingParams(temperature=0, max_new_tokens=2, stop_token_ids=())
    sampler.generate([list(range(1, 60))], params)
    assert sampler.block_table[0, 1:15].ne(0).all()  # the long prompt's blocks are still written there
    sampler.add([5, 6, 7], params)
    sampler.step()
    assert sampler.block_table[0, 1:].eq(0).all()


def test_argmax_takes_the_first_maximum_of_large_vocabularies():
    gen = torch.Generator().manual_seed(0)
    for width in (151936, 2048, 4099):
        x = torch.randn(5, width, generator=gen)
        x[1, 7] = x[1, width - 3] = 50.0  # a tie across blocks
        x[2, 300] = x[2, 301] = 50.0  # a tie within a block
        x[3, :] = 1.0
        index, top = argmax(x)
        want_top, want_index = x.max(-1)
        assert torch.equal(index, want_index) and torch.equal(top, want_top)


def test_the_sampler_caches_are_attention_caches():
    cache = PagedKVCache(2, 4, 4, 2, 8, torch.float32, "cpu")
    table, lengths = torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    step = CacheStep(cache, torch.zeros(1, dtype=torch.long), table, torch.tensor([0, 1], dtype=torch.int32),
                     lengths, 1)
    assert isinstance(step, AttentionCache)
    assert isinstance(DecodeAttention(cache.data, table, lengths), AttentionCache)
