"""The compiled decode step (Sampler(compile=...)) against the eager sampler and the reference paged attention."""
import os

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

import kernels.reference
from litere import cpu
from litere.sampler import decode_graph
from litere.sampler.decode_graph import CompiledDecode, CompiledDecodeMismatch, DecodeAttention
from litere.sampler import Sampler, SamplingParams

from model_utils import block_writes_in_reverse, drain, random_model, random_prompts, small_config

VOCAB = 256
GREEDY = SamplingParams(temperature=0, max_new_tokens=14, stop_token_ids=())
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=18, seed=5, stop_token_ids=())


@pytest.fixture(scope="module")
def model():
    return random_model(small_config(vocab_size=VOCAB), seed=21)


def prompts(*lengths, seed=0):
    return random_prompts(VOCAB, *lengths, seed=seed)


def agent_like_workload(sampler):
    """A one-token prompt, three samples sharing a prompt (copy-on-write blocks), a paused request extended with
    forced tokens, and requests joining while others decode; returns (tokens, logprobs) per request."""
    one, shared, held, late = prompts(1, 37, 20, 9, seed=3)
    sampler.add(one, GREEDY)
    sampler.add(shared, SAMPLED, n=3)
    held_id = sampler.add(held, GREEDY, resumable=True)[0]
    for _ in range(5):
        sampler.step()
    sampler.add(late, SAMPLED)
    results = {i: (o.token_ids, o.logprobs) for i, o in drain(sampler).items()}
    sampler.extend(held_id, prompts(7, seed=4)[0])
    results.update({("extended", i): (o.token_ids, o.logprobs) for i, o in drain(sampler).items()})
    sampler.release(held_id)
    return results


def assert_same_results(eager, compiled):
    assert eager.keys() == compiled.keys()
    for key, (tokens, logprobs) in eager.items():
        assert compiled[key][0] == tokens
        torch.testing.assert_close(torch.tensor(compiled[key][1]), torch.tensor(logprobs), atol=1e-5, rtol=0)


def test_block_table_writes_do_not_depend_on_their_order(model, monkeypatch):
    """A fork's shared last block and its copy-on-write replacement are queued in the same step; applied in reverse
    order (model_utils.block_writes_in_reverse), the writes leave the workload's tokens unchanged."""
    reference = agent_like_workload(Sampler(model, max_cache_tokens=4096, block_size=8))
    copies = block_writes_in_reverse(monkeypatch)
    assert_same_results(reference, agent_like_workload(Sampler(model, max_cache_tokens=4096, block_size=8)))
    assert copies  # the workload's forks did copy a shared block


def count_compiled_steps(monkeypatch):
    calls = []
    original = CompiledDecode.__call__

    def counting(self, *args):
        calls.append(args[0].shape[0])
        return original(self, *args)

    monkeypatch.setattr(CompiledDecode, "__call__", counting)
    return calls


def record_eager_batches(monkeypatch):
    """The new-token counts of the entries of every eager forward."""
    batches = []
    original = Sampler._eager_forward

    def recording(self, batch):
        batches.append([n for _, n in batch])
        return original(self, batch)

    monkeypatch.setattr(Sampler, "_eager_forward", recording)
    return batches


@pytest.mark.parametrize("cache_tokens", [4096, 160])  # 160: preemption and recomputation
def test_compiled_decode_gives_the_eager_tokens_and_logprobs(model, monkeypatch, cache_tokens):
    eager = agent_like_workload(Sampler(model, max_cache_tokens=cache_tokens, block_size=8))
    calls = count_compiled_steps(monkeypatch)
    eager_batches = record_eager_batches(monkeypatch)
    compiled = agent_like_workload(Sampler(model, max_cache_tokens=cache_tokens, block_size=8, compile="default"))
    assert_same_results(eager, compiled)
    assert len(calls) > 20 and 1 in calls and max(calls) >= 4  # decode steps ran compiled, alone and batched
    # prefills ran eagerly, and never took a decoding sequence with them
    assert eager_batches and all(n > 1 for batch in eager_batches for n in batch)


def test_a_prefill_beside_decoding_sequences_leaves_them_in_the_graph(model, monkeypatch):
    early, late = prompts(5, 12, 9, seed=6), prompts(30, seed=7)[0]
    sampler = Sampler(model, max_cache_tokens=4096, block_size=8, compile="default")
    ids = [sampler.add(p, GREEDY)[0] for p in early]
    for _ in range(3):
        sampler.step()
    calls, eager_batches = count_compiled_steps(monkeypatch), record_eager_batches(monkeypatch)
    ids.append(sampler.add(late, GREEDY)[0])
    sampler.step()
    assert calls == [3] and eager_batches == [[30]]
    outputs = drain(sampler)
    eager = Sampler(model, max_cache_tokens=4096, block_size=8).generate(early + [late], GREEDY)
    assert [outputs[i].token_ids for i in ids] == [o.token_ids for o in eager]


def test_padded_shapes_give_the_same_results(model, monkeypatch):
    """The padding used with CUDA graphs (batch and block-table width up to powers of two), checked on CPU."""
    eager = agent_like_workload(Sampler(model, max_cache_tokens=4096, block_size=8))
    sampler = Sampler(model, max_cache_tokens=4096, block_size=8, compile="default")
    sampler._compiled.pad_shapes = True
    calls = count_compiled_steps(monkeypatch)
    assert_same_results(eager, agent_like_workload(sampler))
    assert any(n & (n - 1) for n in calls)  # batches that are not powers of two ran padded


def test_one_graph_serves_batch_sizes_lengths_and_cache_sizes(model):
    """Continuous batching must not recompile: after the graphs for batch 1 and batch >= 2 exist, new batch sizes,
    longer contexts and other cache sizes reuse them."""
    for cache_tokens in (512, 2048):
        Sampler(model, max_cache_tokens=cache_tokens, compile="default").generate(prompts(3, 50), GREEDY)
        Sampler(model, max_cache_tokens=cache_tokens, compile="default").generate(prompts(5), GREEDY)
    before = counters["stats"]["unique_graphs"]
    for cache_tokens, lengths in ((1024, (2, 70, 33, 5, 18)), (4096, (130, 7, 9)), (256, (3, 4))):
        Sampler(model, max_cache_tokens=cache_tokens, block_size=16, compile="default").generate(
            prompts(*lengths, seed=cache_tokens), SamplingParams(temperature=0, max_new_tokens=40, stop_token_ids=()))
    assert counters["stats"]["unique_graphs"] == before


def test_decode_attention_equals_the_reference_paged_attention():
    """The compiled step's attention formula, run eagerly: GQA, scattered blocks, a one-token sequence, padding."""
    gen = torch.Generator().manual_seed(0)
    layers, blocks, block_size, n_kv, group, dim = 2, 12, 4, 2, 3, 16
    data = torch.randn(layers, 2, blocks, block_size, n_kv, dim, generator=gen)
    table = torch.tensor([[7, 2, 9, 0], [4, 0, 0, 0], [11, 1, 5, 3]], dtype=torch.int32)
    lengths = torch.tensor([10, 1, 16], dtype=torch.int32)
    q = torch.randn(3, n_kv * group, dim, generator=gen)
    k, v = torch.randn(3, n_kv, dim, generator=gen), torch.randn(3, n_kv, dim, generator=gen)
    attention = DecodeAttention(data, table, lengths)
    got = attention.attend(1, q, k, v)
    written = data.clone()
    slots = (table[torch.arange(3), (lengths - 1) // block_size] * block_size + (lengths - 1) % block_size).long()
    written[1, 0].view(-1, n_kv, dim)[slots] = k
    written[1, 1].view(-1, n_kv, dim)[slots] = v
    expected = kernels.reference.paged_attention(q, written[1, 0], written[1, 1], table,
                                                 torch.tensor([0, 1, 2, 3], dtype=torch.int32), lengths, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attention.new_kv[0], torch.stack((k, v)))


def faulty_graph(fault, batches):
    """A stand-in for the compiled step (the eager step with its hidden states spoilt in the batches of more than one
    row, or in any), as a bad entry in the compile cache gives."""
    def step(model, input_ids, *rest):
        hidden, new_kv = decode_graph.decode_step(model, input_ids, *rest)
        if batches == "of more than one" and len(input_ids) == 1:
            return hidden, new_kv
        return (hidden * 1.01 if fault == "off by 1%" else hidden.masked_fill(hidden > 1, float("nan"))), new_kv
    return lambda *args: step


@pytest.mark.parametrize("fault, batches", [("NaN", "any"), ("off by 1%", "any"), ("NaN", "of more than one")])
def test_a_graph_that_strays_from_the_eager_step_is_dropped_with_a_warning(model, monkeypatch, fault, batches):
    """Each graph's first result (batch of one, larger batches) is checked against the eager step; one that strays
    is dropped and the step redone eagerly, so the sampler gives the eager sampler's tokens."""
    eager = agent_like_workload(Sampler(model, max_cache_tokens=4096, block_size=8))
    monkeypatch.setattr(decode_graph, "_compiled_step", faulty_graph(fault, batches))
    calls = count_compiled_steps(monkeypatch)
    with pytest.warns(RuntimeWarning, match="compiled decode step disagrees .* This sampler decodes eagerly") as caught:
        compiled = agent_like_workload(Sampler(model, max_cache_tokens=4096, block_size=8, compile="default"))
    assert len(caught) == 1 and "TORCHINDUCTOR_CACHE_DIR" in str(caught[0].message)
    assert_same_results(eager, compiled)
    if batches == "any":  # no step ran through the graph: the eager sampler's results to the bit
        assert compiled == eager
    # the workload's first compiled step is a batch of one (its one-token prompt)
    assert calls == [1] if batches == "any" else (calls[-1] > 1 and set(calls[:-1]) == {1})


def test_a_bf16_model_keeps_its_graphs(monkeypatch):
    """bf16 rounding between the graph and the eager step stays within the check's tolerance: no fallback (which
    pyproject's filterwarnings turns into an error here), every decode step through the graph."""
    bf16_model = random_model(small_config(vocab_size=VOCAB), seed=3).to(torch.bfloat16)
    calls = count_compiled_steps(monkeypatch)
    Sampler(bf16_model, max_cache_tokens=4096, compile="default").generate(prompts(1, 40, 70, 9, seed=1), GREEDY)
    assert len(calls) >= GREEDY.max_new_tokens - 1 and 1 in calls and max(calls) >= 3


def test_the_check_against_the_eager_step_allows_rounding_only():
    gen = torch.Generator().manual_seed(0)
    hidden, kv = torch.randn(4, 32, generator=gen), torch.randn(2, 2, 4, 2, 8, generator=gen)
    decode_graph._check_against_eager((hidden, kv), (hidden.bfloat16(), kv.bfloat16()), 4)  # a bf16 model's rounding
    with pytest.raises(CompiledDecodeMismatch, match="batch of 4 \\(new keys and values: largest difference"):
        decode_graph._check_against_eager((hidden, kv.bfloat16().float()), (hidden, kv), 4)  # too much for fp32
    decode_graph._check_against_eager((hidden + 1e-5, kv), (hidden, kv), 4)
    spoilt = hidden.clone()
    spoilt[2, 3] = float("inf")
    with pytest.raises(CompiledDecodeMismatch, match="hidden states: largest difference inf .* 1 not finite"):
        decode_graph._check_against_eager((spoilt, kv), (hidden, kv), 4)
    decode_graph._check_against_eager((hidden, kv), (spoilt, kv), 4)  # a non-finite eager result: no verdict
    with pytest.raises(CompiledDecodeMismatch, match="new keys and values"):  # on that tensor only
        decode_graph._check_against_eager((hidden, kv + 1), (spoilt, kv), 4)


def test_a_lowered_cpu_capability_compiles_into_a_cache_of_its_own(model, monkeypatch):
    """Inductor's cache keys leave ATEN_CPU_CAPABILITY out, and a graph cached at avx2 corrupted the heap of a process
    at the CPU's own capability: a sampler that compiles at a lowered capability uses a cache folder of its own."""
    default = default_cache_dir()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    Sampler(model, max_cache_tokens=256, compile="default")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default + "_avx2"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default)  # torch writes its default here once it has used it
    cpu.separate_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default + "_avx2"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/chosen/by/the/user")
    cpu.separate_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/chosen/by/the/user"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default)
    cpu.separate_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default


def test_bad_compile_mode_is_refused(model):
    with pytest.raises(ValueError, match="compile='fast'"):
        Sampler(model, max_cache_tokens=256, compile="fast")
    with pytest.raises(ValueError, match="CUDA graphs; on cpu use 'default'"):
        Sampler(model, max_cache_tokens=256, compile="reduce-overhead")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_decode_gives_the_eager_tokens_and_logprobs(mode):
    """On CUDA: the compiled step (Triton kernels from the compiler; with reduce-overhead, CUDA graphs replayed
    over padded shapes) against the eager CUDA sampler (the project's Triton paged attention)."""
    gpu_model = random_model(small_config(vocab_size=VOCAB), seed=21).cuda()
    eager = agent_like_workload(Sampler(gpu_model, max_cache_tokens=4096, block_size=8))
    compiled = agent_like_workload(Sampler(gpu_model, max_cache_tokens=4096, block_size=8, compile=mode))
    assert eager.keys() == compiled.keys()
    for key, (tokens, logprobs) in eager.items():
        assert compiled[key][0] == tokens
        torch.testing.assert_close(torch.tensor(compiled[key][1]), torch.tensor(logprobs), atol=1e-4, rtol=0)


def test_model_shapes_do_not_share_one_recompile_budget(monkeypatch):
    """Each model configuration compiles into a cache of its own: with dynamo's per-function graph limit lowered to
    2 (8 by default; under fullgraph, exceeding it is an error), three shapes still compile and agree with eager."""
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    for i in range(3):
        shape_model = random_model(small_config(vocab_size=VOCAB, head_dim=8 * (i + 3), num_hidden_layers=1), seed=i)
        eager = Sampler(shape_model, max_cache_tokens=256).generate(prompts(4, 6), GREEDY)
        compiled = Sampler(shape_model, max_cache_tokens=256, compile="default").generate(prompts(4, 6), GREEDY)
        assert [o.token_ids for o in compiled] == [o.token_ids for o in eager]
