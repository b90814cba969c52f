"""PyTorch reference implementations of the kernels: the ground truth for tests and the path used off CUDA."""
import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension with Hugging Face numerics: fp32 statistics, cast back, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """Causal attention over documents packed along dim 0: q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    bounds = cu_seqlens.tolist()
    lengths = {b - a for a, b in zip(bounds[:-1], bounds[1:])}
    if len(lengths) == 1:  # equal-length documents: one batched call
        n_docs, length = len(bounds) - 1, lengths.pop()
        qb, kb, vb = (t.view(n_docs, length, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale, enable_gqa=True)
        return out.transpose(1, 2).reshape(q.shape)
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        # 4-D (batch of one): on CPU, 3-D inputs take SDPA's math path, several times slower than its flash kernel
        qd, kd, vd = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=True)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, scale=None):
    """New query tokens of B sequences against their paged KV cache (which already holds the new tokens' k/v).

    q (Tq, Hq, D) packed by sequence; k_cache/v_cache (num_blocks, block_size, Hkv, D); block_table (B, max_blocks);
    seqlens_k (B,) total cached lengths. Query i of sequence b (n_b new tokens) sits at seqlens_k[b] - n_b + i.

    Sequences with the same number of new tokens (all decoding ones, equal-length prompts) are attended in one
    batched call, so a decode step is one gather and one SDPA however many sequences run, and a long prefill never
    pads the short ones. The GQA group is folded into the query axis (B, Hkv, n * group, D) rather than passed as
    enable_gqa, which on CPU takes a path several times slower in bf16. Long contexts are gathered a few sequences
    at a time, so that the copied k/v are still in cache when SDPA reads them.
    """
    if max_seqlen_q == 1 and q.shape[0] == block_table.shape[0]:  # pure decode: skip the grouping
        return _paged_equal_lengths(q.unsqueeze(1), k_cache, v_cache, block_table, seqlens_k, scale)
    bounds = cu_seqlens_q.tolist()
    q_lens = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    by_length: dict[int, list[int]] = {}
    for seq, n in enumerate(q_lens):
        by_length.setdefault(n, []).append(seq)
    if len(by_length) == 1:
        n = q_lens[0]
        return _paged_equal_lengths(q.reshape(len(q_lens), n, *q.shape[1:]), k_cache, v_cache, block_table, seqlens_k,
                                    scale)
    out = torch.empty_like(q)
    device = q.device
    for n, seqs in by_length.items():
        if n == 0:
            continue
        rows = torch.tensor(seqs, device=device)
        tokens = (torch.tensor([bounds[s] for s in seqs], device=device)[:, None]
                  + torch.arange(n, device=device)[None, :]).reshape(-1)
        out[tokens] = _paged_equal_lengths(q[tokens].view(len(seqs), n, *q.shape[1:]), k_cache, v_cache,
                                           block_table[rows], seqlens_k[rows], scale)
    return out


_GATHER_BYTES = 2 << 20


def _paged_equal_lengths(q, k_cache, v_cache, block_table, seqlens_k, scale):
    """q (B, n, Hq, D): n new tokens for each of B sequences -> (B * n, Hq, D)."""
    n_seq = q.shape[0]
    block_bytes = k_cache[0].numel() * k_cache.element_size()
    per_seq = 2 * block_bytes * -(-int(seqlens_k.max()) // k_cache.shape[1])
    chunk = max(1, _GATHER_BYTES // per_seq)
    if chunk >= n_seq:
        return _paged_gathered(q, k_cache, v_cache, block_table, seqlens_k, scale)
    return torch.cat([_paged_gathered(q[i:i + chunk], k_cache, v_cache, block_table[i:i + chunk],
                                      seqlens_k[i:i + chunk], scale) for i in range(0, n_seq, chunk)])


def _paged_gathered(q, k_cache, v_cache, block_table, seqlens_k, scale):
    n_seq, n, n_heads, dim = q.shape
    block_size, n_kv = k_cache.shape[1], k_cache.shape[2]
    group = n_heads // n_kv
    n_blocks = -(-int(seqlens_k.max()) // block_size)
    blocks = block_table[:, :n_blocks].reshape(-1)
    k = k_cache.index_select(0, blocks).view(n_seq, n_blocks * block_size, n_kv, dim).transpose(1, 2)
    v = v_cache.index_select(0, blocks).view(n_seq, n_blocks * block_size, n_kv, dim).transpose(1, 2)
    if n == 1 and n_seq == 1:  # one decoding sequence sees all its keys: no mask
        length = int(seqlens_k[0])
        out = F.scaled_dot_product_attention(q.reshape(1, n_kv, group, dim), k[:, :, :length], v[:, :, :length],
                                             scale=scale)
        return out.view(1, n_heads, dim)
    key_pos = torch.arange(n_blocks * block_size, device=q.device)
    if n == 1:
        q = q.reshape(n_seq, n_kv, group, dim)
        mask = key_pos[None, :] < seqlens_k[:, None]  # (B, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None], scale=scale)
        return out.view(n_seq, n_heads, dim)
    # rows of the folded query: (token i, group member g) -> i * group + g, all reading kv head h
    q = q.view(n_seq, n, n_kv, group, dim).permute(0, 2, 1, 3, 4).reshape(n_seq, n_kv, n * group, dim)
    query_pos = (seqlens_k.long() - n)[:, None] + torch.arange(n, device=q.device)[None, :]
    mask = key_pos[None, None, :] <= query_pos[:, :, None]  # (B, n, L)
    if group > 1:
        mask = mask.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale)
    return out.view(n_seq, n_kv, n, group, dim).permute(0, 2, 1, 3, 4).reshape(n_seq * n, n_heads, dim)
