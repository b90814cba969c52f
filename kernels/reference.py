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
        qd, kd, vd = (t[a:b].transpose(0, 1) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1))
    return torch.cat(outs)


def paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, scale=None):
    """New query tokens of B sequences against their paged KV cache (which already holds the new tokens' k/v).

    q (Tq, Hq, D) packed by sequence; k_cache/v_cache (num_blocks, block_size, Hkv, D); block_table (B, max_blocks);
    seqlens_k (B,) total cached lengths. Query i of sequence b (n_b new tokens) sits at seqlens_k[b] - n_b + i.
    """
    n_seq = block_table.shape[0]
    device = q.device
    q_lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
    seq_of_token = torch.repeat_interleave(torch.arange(n_seq, device=device), q_lens)
    index_in_seq = torch.arange(q.shape[0], device=device) - cu_seqlens_q[:-1].long()[seq_of_token]
    q_pad = q.new_zeros(n_seq, max_seqlen_q, q.shape[1], q.shape[2])
    q_pad[seq_of_token, index_in_seq] = q

    block_size = k_cache.shape[1]
    n_blocks = -(-int(seqlens_k.max()) // block_size)
    table = block_table[:, :n_blocks].long()
    k = k_cache[table].flatten(1, 2)  # (B, n_blocks * block_size, Hkv, D)
    v = v_cache[table].flatten(1, 2)

    key_pos = torch.arange(k.shape[1], device=device)
    query_pos = (seqlens_k.long() - q_lens)[:, None] + torch.arange(max_seqlen_q, device=device)[None, :]
    mask = key_pos[None, None, :] <= query_pos[:, :, None]  # (B, max_q, L); padded queries see key 0 at least
    out = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask[:, None], scale=scale, enable_gqa=True,
    )
    return out.transpose(1, 2)[seq_of_token, index_in_seq]
