"""The KV-cached sampler against uncached full forwards of the same model (CPU, fp32, tiny random models)."""
import pytest
import torch

from litere.sampler.kv_cache import CacheStep, PagedKVCache
from litere.sampler import Sampler, SamplingParams

from model_utils import block_writes_in_reverse, drain, hf_twin, random_model, random_prompts, small_config

VOCAB = 256
GREEDY = SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=())


@pytest.fixture(scope="module")
def model():
    return random_model(small_config(vocab_size=VOCAB), seed=3)


def prompts(*lengths, seed=0):
    return random_prompts(VOCAB, *lengths, seed=seed)


@torch.no_grad()
def uncached_logits(model, ids):
    return model.logits(model(torch.tensor(ids), torch.arange(len(ids)))).float()


@torch.no_grad()
def reference_greedy(model, prompt, n, repetition=1.0, presence=0.0):
    """Argmax over full uncached forwards, with HF-style penalties applied by hand."""
    ids = list(prompt)
    for _ in range(n):
        logits = uncached_logits(model, ids)[-1]
        output = set(ids[len(prompt):])
        for t in set(ids):
            logits[t] = logits[t] / repetition if logits[t] > 0 else logits[t] * repetition
            if t in output:
                logits[t] -= presence
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def trainer_logprobs(model, prompt, output, temperature):
    ids = torch.tensor(prompt + output)
    hidden = model(ids, torch.arange(len(ids)))
    return model.token_logprobs(hidden[len(prompt) - 1:-1], ids[len(prompt):], temperature).tolist()


def test_cached_logits_match_uncached_across_chunks_and_scattered_blocks(model):
    """Two sequences prefilled in uneven chunks, then decoded, in blocks that are not in order."""
    cfg = model.config
    cache = PagedKVCache(cfg.num_hidden_layers, 16, 4, cfg.num_key_value_heads, cfg.head_dim, torch.float32, "cpu")
    seqs = prompts(13, 7, seed=1)
    tables = [[9, 2, 14, 5], [3, 11]]
    table = torch.tensor([tables[0], tables[1] + [0, 0]], dtype=torch.int32)
    chunks = [(5, 3), (6, 3), (1, 1), (1, 0)]  # tokens of each sequence per step
    done, got = [0, 0], [[], []]
    with torch.no_grad():
        for step in chunks:
            ids, pos, slots, lens, owners = [], [], [], [], []
            for b, n in enumerate(step):
                if n == 0:
                    continue
                p = list(range(done[b], done[b] + n))
                ids += seqs[b][done[b]:done[b] + n]
                pos += p
                slots += [tables[b][i // 4] * 4 + i % 4 for i in p]
                lens.append(n)
                owners.append(b)
                done[b] += n
            rows = torch.tensor(owners)
            cu = torch.nn.functional.pad(torch.tensor(lens).cumsum(0), (1, 0)).int()
            seqlens_k = torch.tensor([done[b] for b in owners], dtype=torch.int32)
            step_cache = CacheStep(cache, torch.tensor(slots), table[rows], cu, seqlens_k, max(lens))
            logits = model.logits(model(torch.tensor(ids), torch.tensor(pos), cache=step_cache))
            for i, b in enumerate(owners):
                got[b].append(logits[cu[i]:cu[i + 1]])
    for b in range(2):
        torch.testing.assert_close(torch.cat(got[b]), uncached_logits(model, seqs[b]), atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("block_size,max_batch_tokens", [(4, 64), (16, 2048), (1, 8)])
def test_greedy_equals_argmax_of_uncached_forwards(model, block_size, max_batch_tokens):
    ps = prompts(5, 17, 1, 30)
    sampler = Sampler(model, max_cache_tokens=512, block_size=block_size, max_batch_tokens=max_batch_tokens,
                      max_num_seqs=8)
    outs = sampler.generate(ps, GREEDY)
    for p, out in zip(ps, outs):
        assert out.token_ids == reference_greedy(model, p, 12)
        assert out.finish_reason == "length"
        assert len(out.logprobs) == 12


def test_greedy_matches_transformers_generate(model):
    hf = hf_twin(model)
    prompt = prompts(9, seed=4)[0]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                             pad_token_id=0)[0, 9:].tolist()
    out = Sampler(model, max_cache_tokens=256).generate([prompt], SamplingParams(
        temperature=0, max_new_tokens=24, stop_token_ids=()))[0]
    assert out.token_ids == theirs


def test_batch_invariance(model):
    target = prompts(11, seed=5)[0]
    others = prompts(3, 25, 8, 40, seed=6)
    seeded = SamplingParams(temperature=0.9, top_k=50, top_p=0.9, max_new_tokens=16, seed=1234, stop_token_ids=())
    greedy = SamplingParams(temperature=0, max_new_tokens=16, stop_token_ids=())
    results = []
    for batch, block_size in (([], 16), (others[:2], 4), (others, 8)):
        sampler = Sampler(model, max_cache_tokens=1024, block_size=block_size)
        ids = [sampler.add(target, greedy)[0], sampler.add(target, seeded)[0]]
        for p in batch:
            sampler.add(p, SamplingParams(temperature=1.0, max_new_tokens=20, stop_token_ids=()))
        outs = drain(sampler)
        results.append([outs[i].token_ids for i in ids])
    assert results[0] == results[1] == results[2]
    assert results[0][0] != results[0][1]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_equal_trainer_token_logprobs(model, temperature):
    ps = prompts(6, 19, seed=7)
    params = SamplingParams(temperature=temperature, max_new_tokens=10, seed=11, stop_token_ids=())
    outs = Sampler(model, max_cache_tokens=512, block_size=4).generate(ps, params)
    for p, out in zip(ps, outs):
        expected = trainer_logprobs(model, p, out.token_ids, temperature or 1.0)
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(expected), atol=1e-5, rtol=0)


def count_forward_tokens(model):
    counts = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, args, out: counts.append(args[0].numel()))
    return counts, handle


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_new_tokens=6, stop_token_ids=()),
    SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=6, seed=99, stop_token_ids=()),
])
def test_extend_then_resume_equals_generating_from_the_concatenation(model, params):
    prompt, tool = prompts(13, 9, seed=8)
    sampler = Sampler(model, max_cache_tokens=512, block_size=4)
    [rid] = sampler.add(prompt, params, resumable=True)
    first = drain(sampler)[rid]
    assert first.finish_reason == "length" and len(first.token_ids) == 6
    counts, handle = count_forward_tokens(model)
    sampler.extend(rid, tool)
    second = drain(sampler)[rid]
    handle.remove()
    assert counts[0] == 1 + len(tool)  # the last sampled token (not yet cached) and the forced ones only
    history = prompt + first.token_ids + tool
    again = Sampler(model, max_cache_tokens=512, block_size=4).generate([history], params)[0]
    assert second.token_ids == again.token_ids
    torch.testing.assert_close(torch.tensor(second.logprobs), torch.tensor(again.logprobs), atol=1e-5, rtol=0)
    sampler.release(rid)
    assert sampler.blocks.num_free == sampler.blocks.num_blocks


def test_prompt_sharing_equals_separate_requests(model):
    prompt = prompts(10, seed=9)[0]  # 10 tokens in blocks of 4: the samples share a partly filled block
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=500, stop_token_ids=())
    sampler = Sampler(model, max_cache_tokens=512, block_size=4)
    counts, handle = count_forward_tokens(model)
    ids = sampler.add(prompt, params, n=4)
    shared = drain(sampler)
    handle.remove()
    assert counts[0] == len(prompt) and counts[1:] == [4] * 7  # one prefill, then 4 decodes per step
    separate = Sampler(model, max_cache_tokens=512, block_size=4)
    for i, rid in enumerate(ids):
        out = separate.generate([prompt], SamplingParams(temperature=1.0, max_new_tokens=8, seed=500 + i,
                                                         stop_token_ids=()))[0]
        assert shared[rid].token_ids == out.token_ids
        torch.testing.assert_close(torch.tensor(shared[rid].logprobs), torch.tensor(out.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(shared[i].token_ids) for i in ids}) == 4
    assert sampler.blocks.num_free == sampler.blocks.num_blocks


def test_penalties_match_a_hand_written_reference(model):
    ps = prompts(8, 15, seed=10)
    params = SamplingParams(temperature=0, repetition_penalty=1.3, presence_penalty=0.7, max_new_tokens=10,
                            stop_token_ids=())
    plain = SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=())
    outs = Sampler(model, max_cache_tokens=512, block_size=4).generate(ps + ps[:1], [params, params, plain])
    for p, out in zip(ps, outs):
        assert out.token_ids == reference_greedy(model, p, 10, repetition=1.3, presence=0.7)
    assert outs[2].token_ids == reference_greedy(model, ps[0], 10)


def test_stop_token_is_returned_with_its_logprob(model):
    prompt = prompts(7, seed=11)[0]
    free = reference_greedy(model, prompt, 10)
    stop = free[4]
    out = Sampler(model, max_cache_tokens=256, stop_token_ids=[stop]).generate(
        [prompt], SamplingParams(temperature=0, max_new_tokens=10))[0]
    cut = free.index(stop) + 1
    assert out.token_ids == free[:cut] and out.finish_reason == "stop"
    expected = trainer_logprobs(model, prompt, out.token_ids, 1.0)
    torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(expected), atol=1e-5, rtol=0)


def test_default_stop_token_is_the_config_eos(model):
    prompt = prompts(7, seed=11)[0]
    free = reference_greedy(model, prompt, 10)
    same_weights = random_model(small_config(vocab_size=VOCAB, eos_token_id=free[3]), seed=3)
    out = Sampler(same_weights, max_cache_tokens=256).generate([prompt], SamplingParams(temperature=0))[0]
    assert out.token_ids == free[:free.index(free[3]) + 1] and out.finish_reason == "stop"
    out = Sampler(model, max_cache_tokens=256).generate([prompt], SamplingParams(temperature=0, max_new_tokens=10))[0]
    assert out.token_ids == free and out.finish_reason == "length"


def test_stop_strings_need_decode_and_stop_generation(model):
    prompt = prompts(7, seed=11)[0]
    free = reference_greedy(model, prompt, 10)
    decode = lambda ids: "".join(f"<{t}>" for t in ids)  # noqa: E731
    target = f"<{free[2]}><{free[3]}>"
    params = SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=(), stop_strings=(target,))
    with pytest.raises(ValueError, match="decode"):
        Sampler(model, max_cache_tokens=256).add(prompt, params)
    out = Sampler(model, max_cache_tokens=256, decode=decode).generate([prompt], params)[0]
    end = decode(free).index(target) + len(target)
    assert decode(out.token_ids) == decode(free)[:end] and out.finish_reason == "stop"


def test_budget_finish_reason(model):
    prompt = prompts(10, seed=12)[0]
    out = Sampler(model, max_cache_tokens=256).generate([prompt], SamplingParams(
        temperature=0, max_new_tokens=50, max_total_tokens=16, stop_token_ids=()))[0]
    assert out.finish_reason == "budget" and len(out.token_ids) == 6
    out = Sampler(model, max_cache_tokens=256, max_seq_len=13).generate([prompt], GREEDY)[0]
    assert out.finish_reason == "budget" and len(out.token_ids) == 3


def test_bad_input_is_rejected_with_clear_errors(model):
    sampler = Sampler(model, max_cache_tokens=64, block_size=4)
    with pytest.raises(ValueError, match="empty"):
        sampler.add([], GREEDY)
    with pytest.raises(ValueError, match="budget of 64"):
        sampler.add(list(range(64)), GREEDY)
    with pytest.raises(ValueError, match="max_total_tokens"):
        sampler.add(list(range(20)), SamplingParams(max_total_tokens=20))
    with pytest.raises(ValueError, match=r"\[256, -1\]"):
        sampler.add([1, 256, -1], GREEDY)
    with pytest.raises(ValueError, match="integers"):
        sampler.add([1, 2.0], GREEDY)
    with pytest.raises(ValueError, match="stop_token_ids"):
        sampler.add([1, 2], SamplingParams(stop_token_ids=(300,)))
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.add([1, 2], SamplingParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="n=0"):
        sampler.add([1, 2], GREEDY, n=0)
    with pytest.raises(ValueError, match="params must be SamplingParams"):
        sampler.add([1, 2], {"temperature": 0})
    with pytest.raises(ValueError, match="unknown"):
        sampler.extend(12345, [1])
    [rid] = sampler.add([1, 2, 3], GREEDY)
    with pytest.raises(ValueError, match="is waiting; only a paused request"):
        sampler.extend(rid, [1])
    sampler.release(rid)
    assert not sampler.has_work()
    with pytest.raises(ValueError, match="block_size"):
        Sampler(model, max_cache_tokens=64, block_size=0)


def test_extend_over_budget_is_refused(model):
    sampler = Sampler(model, max_cache_tokens=64, block_size=4)
    [rid] = sampler.add([1, 2, 3], SamplingParams(temperature=0, max_new_tokens=4, stop_token_ids=()), resumable=True)
    drain(sampler)
    with pytest.raises(ValueError, match="no room"):
        sampler.extend(rid, list(range(57)))
    sampler.extend(rid, list(range(56)))  # 3 + 4 + 56 = 63 leaves one token
    out = drain(sampler)[rid]
    assert out.finish_reason == "budget" and len(out.token_ids) == 1


@pytest.mark.parametrize("writes", ["in order", "in reverse"])
def test_full_cache_makes_requests_wait_and_all_complete(model, writes, monkeypatch):
    """24 blocks of 4 tokens for six requests needing 8 blocks each: admission waits, decoding preempts. Rows change
    hands and forks copy shared blocks, so the queued block-table writes are also applied in reverse order (as CUDA
    may apply repeated cells of one write), which must not change a token."""
    if writes == "in reverse":
        block_writes_in_reverse(monkeypatch)
    ps = prompts(9, 14, 3, 20, 11, 6, seed=13)
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=())
    sampler = Sampler(model, max_cache_tokens=96, block_size=4, max_num_seqs=8, max_batch_tokens=16)
    ids = [sampler.add(p, params)[0] for p in ps]
    shared = sampler.add(ps[0], SamplingParams(temperature=1.0, max_new_tokens=12, seed=7, stop_token_ids=()), n=3)
    outs = drain(sampler)
    for p, rid in zip(ps, ids):
        assert outs[rid].token_ids == reference_greedy(model, p, 12), rid
    alone = Sampler(model, max_cache_tokens=512, block_size=4)
    for i, rid in enumerate(shared):
        expected = alone.generate([ps[0]], SamplingParams(temperature=1.0, max_new_tokens=12, seed=7 + i,
                                                          stop_token_ids=()))[0]
        assert outs[rid].token_ids == expected.token_ids
    assert sampler.blocks.num_free == sampler.blocks.num_blocks


def test_paused_caches_give_way_and_are_recomputed_on_extend(model):
    ps = prompts(20, 20, 20, seed=14)
    params = SamplingParams(temperature=0, max_new_tokens=6, stop_token_ids=())
    sampler = Sampler(model, max_cache_tokens=64, block_size=4)
    held = [sampler.add(p, params, resumable=True)[0] for p in ps[:2]]
    first = drain(sampler)
    [late] = sampler.add(ps[2], params)  # the held caches fill 14 of 16 blocks: they must be dropped
    assert drain(sampler)[late].token_ids == reference_greedy(model, ps[2], 6)
    tool = prompts(5, seed=15)[0]
    sampler.extend(held[0], tool)
    resumed = drain(sampler)[held[0]]
    history = ps[0] + first[held[0]].token_ids + tool
    assert resumed.token_ids == reference_greedy(model, history, 6)


def test_release_cancels_running_and_shared_requests(model):
    sampler = Sampler(model, max_cache_tokens=256, block_size=4)
    ids = sampler.add(prompts(9)[0], SamplingParams(temperature=1.0, max_new_tokens=5, seed=1, stop_token_ids=()),
                      n=3)
    sampler.release(ids[0])  # before its prefill: the second sample takes it over
    outs = drain(sampler)
    assert sorted(outs) == ids[1:]
    [rid] = sampler.add(prompts(9)[0], GREEDY)
    sampler.step()
    sampler.release(rid)
    assert not sampler.has_work() and sampler.blocks.num_free == sampler.blocks.num_blocks


@pytest.mark.gpu
def test_cuda_sampler_matches_cpu(model):
    """On CUDA (Triton paged attention): greedy tokens equal the CPU run's, logprobs agree closely."""
    ps = prompts(5, 17, 30, seed=16)
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=())
    cpu = Sampler(model, max_cache_tokens=512, block_size=4).generate(ps, params)
    gpu_model = random_model(small_config(vocab_size=VOCAB), seed=3).cuda()
    gpu = Sampler(gpu_model, max_cache_tokens=512, block_size=4).generate(ps, params)
    for a, b in zip(cpu, gpu):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
