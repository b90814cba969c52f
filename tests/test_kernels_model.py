"""A whole Qwen3 on the Triton kernels (LITERE_KERNELS=triton; the interpreter on CPU) vs the PyTorch references."""
import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from litere.config import ModelConfig  # noqa: E402
from litere.sampler.kv_cache import CacheStep, PagedKVCache  # noqa: E402
from litere.model import Qwen3  # noqa: E402
from model_utils import random_model, small_config  # noqa: E402

SEQLENS = [17, 23]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _packed_batch(vocab_size, seqlens, seed, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (sum(seqlens),), generator=gen)
    positions = torch.cat([torch.arange(n) for n in seqlens])
    targets = torch.randint(vocab_size, ids.shape, generator=gen)
    return ids.to(device), positions.to(device), targets.to(device)


def _forward_backward(model, ids, positions, targets, seqlens):
    model.zero_grad(set_to_none=True)
    hidden = model(ids, positions, seqlens=seqlens)
    model.token_logprobs(hidden, targets).sum().backward()
    return hidden.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _run_both(monkeypatch, fn):
    monkeypatch.setenv("LITERE_KERNELS", "torch")
    want = fn()
    monkeypatch.setenv("LITERE_KERNELS", "triton")
    return fn(), want


@pytest.fixture(scope="module")
def model():
    # the "tiny" preset's attention shape (4 query / 2 kv heads of 64), fewer layers and a smaller vocabulary
    return random_model(small_config(hidden_size=128, head_dim=64, num_attention_heads=4, num_key_value_heads=2,
                                     num_hidden_layers=2, vocab_size=256), seed=0).to(DEVICE).train()


def test_packed_forward_and_gradients_match_torch(model, monkeypatch):
    batch = _packed_batch(model.config.vocab_size, SEQLENS, seed=1)
    (hidden, grads), (want_hidden, want_grads) = _run_both(
        monkeypatch, lambda: _forward_backward(model, *batch, SEQLENS))
    torch.testing.assert_close(hidden, want_hidden, atol=1e-5, rtol=1e-4)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], want_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_runs_on_the_kernels_as_close_as_torch(model, monkeypatch):
    """Under bf16 autocast (the trainers' default off FSDP) q and k leave their RMSNorm in fp32 and v its projection
    in bf16: attention gets all three in bf16, as autocast gives PyTorch's, and the kernels' run is no further from
    an fp32 run than PyTorch's autocast run is."""
    batch = _packed_batch(model.config.vocab_size, SEQLENS, seed=4)
    monkeypatch.setenv("LITERE_KERNELS", "torch")
    exact_hidden, exact_grads = _forward_backward(model, *batch, SEQLENS)

    def run():
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            return _forward_backward(model, *batch, SEQLENS)

    (hidden, grads), (torch_hidden, torch_grads) = _run_both(monkeypatch, run)

    def error(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    floor = torch.finfo(torch.bfloat16).eps / 4
    assert error(hidden, exact_hidden) <= 2 * max(error(torch_hidden, exact_hidden), floor)
    for name in grads:
        assert grads[name].dtype == torch.float32, name
        assert error(grads[name], exact_grads[name]) <= 3 * max(error(torch_grads[name], exact_grads[name]), floor), name


def test_cached_prefill_and_decode_match_torch(model, monkeypatch):
    """Prefill 9 tokens into scattered pages of 4 slots, then decode 3: logits agree step by step."""
    config = model.config
    ids = _packed_batch(config.vocab_size, [12], seed=2)[0].tolist()
    table = [5, 1, 6]

    def run():
        cache = PagedKVCache(config.num_hidden_layers, 8, 4, config.num_key_value_heads, config.head_dim,
                             torch.float32, DEVICE)
        logits, done = [], 0
        with torch.no_grad():
            for n in (9, 1, 1, 1):
                positions = list(range(done, done + n))
                slots = torch.tensor([table[p // 4] * 4 + p % 4 for p in positions], device=DEVICE)
                step = CacheStep(cache, slots, torch.tensor([table], dtype=torch.int32, device=DEVICE),
                                 torch.tensor([0, n], dtype=torch.int32, device=DEVICE),
                                 torch.tensor([done + n], dtype=torch.int32, device=DEVICE), n)
                hidden = model(torch.tensor(ids[done:done + n], device=DEVICE),
                               torch.tensor(positions, device=DEVICE), cache=step)
                logits.append(model.logits(hidden))
                done += n
        return torch.cat(logits)

    got, want = _run_both(monkeypatch, run)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_bf16_4b_layers_match_torch(monkeypatch):
    """Two layers of the 4B model in bf16 on real Triton: no further from an fp32 run than PyTorch's bf16 run is."""
    config = dataclasses.replace(ModelConfig.preset("qwen3-4b"), num_hidden_layers=2, vocab_size=1024)
    torch.manual_seed(0)
    fp32_model = Qwen3(config)
    fp32_model.init_weights(std=0.02)
    fp32_model = fp32_model.to("cuda")
    bf16_model = Qwen3(config)
    bf16_model.load_state_dict(fp32_model.state_dict())
    bf16_model = bf16_model.to("cuda", torch.bfloat16)
    seqlens = [1500, 548]
    batch = _packed_batch(config.vocab_size, seqlens, seed=3, device="cuda")

    monkeypatch.setenv("LITERE_KERNELS", "torch")
    exact_hidden, exact_grads = _forward_backward(fp32_model, *batch, seqlens)
    (hidden, grads), (torch_hidden, torch_grads) = _run_both(
        monkeypatch, lambda: _forward_backward(bf16_model, *batch, seqlens))

    def error(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    floor = torch.finfo(torch.bfloat16).eps / 4
    assert error(hidden, exact_hidden) <= 2 * max(error(torch_hidden, exact_hidden), floor)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_norm.weight",
                 "model.layers.1.input_layernorm.weight", "model.embed_tokens.weight"):
        torch_error = error(torch_grads[name], exact_grads[name])
        assert error(grads[name], exact_grads[name]) <= 3 * max(torch_error, floor), name
