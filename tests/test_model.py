import pytest
import torch
import torch.nn.functional as F

from litere.config import ModelConfig
from litere.model import Qwen3

from model_utils import hf_twin, positions_for, random_model, small_config

CASES = {
    "tied-gqa1": dict(tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=4),
    "untied-gqa4": dict(tie_word_embeddings=False, num_attention_heads=8, num_key_value_heads=2),
    "tied-gqa4-headdim24": dict(tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=1, head_dim=24),
    "untied-gqa1-headdim8": dict(tie_word_embeddings=False, num_attention_heads=2, num_key_value_heads=2, head_dim=8),
}


@pytest.mark.parametrize("case", CASES)
def test_fp32_logits_match_transformers(case):
    model = random_model(small_config(**CASES[case]))
    hf = hf_twin(model)
    ids = torch.randint(0, 256, (3, 41), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.logits(model(ids, positions_for(ids)))
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_fp32_gradients_match_transformers(case):
    """The training path: packed documents (per-document positions, no attention across) against transformers
    on the same documents one by one, loss summed over documents, every parameter's gradient compared."""
    model = random_model(small_config(**CASES[case])).train()
    hf = hf_twin(model).train()
    gen = torch.Generator().manual_seed(5)
    docs = [torch.randint(0, 256, (n,), generator=gen) for n in (17, 40, 9)]
    ids = torch.cat(docs)
    positions = torch.cat([torch.arange(len(d)) for d in docs])
    logits = model.logits(model(ids, positions, seqlens=[len(d) for d in docs]))
    loss, start = 0.0, 0
    for doc in docs:
        loss = loss + F.cross_entropy(logits[start:start + len(doc) - 1], doc[1:], reduction="sum")
        start += len(doc)
    loss.backward()
    hf_loss = sum(F.cross_entropy(hf(doc[None]).logits[0, :-1], doc[1:], reduction="sum") for doc in docs)
    hf_loss.backward()
    torch.testing.assert_close(loss, hf_loss, atol=1e-4, rtol=1e-5)
    theirs = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=5e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", ["tied-gqa1", "untied-gqa4"])
def test_bf16_logits_close_to_transformers(case):
    reference = random_model(small_config(**CASES[case]))
    model = random_model(small_config(**CASES[case])).to(torch.bfloat16)
    hf = hf_twin(model)
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = reference.logits(reference(ids, positions_for(ids)))
        ours = model.logits(model(ids, positions_for(ids))).float()
        theirs = hf(ids).logits.float()
    # bf16 rounding differs by kernel: ours must stay as close to the fp32 logits as transformers' bf16 run is.
    hf_error = (theirs - exact).abs().max()
    assert (ours - exact).abs().max() <= 1.25 * hf_error
    assert (ours - theirs).abs().max() <= 2 * hf_error
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.95


@pytest.mark.parametrize("case", ["tied-gqa1", "untied-gqa4"])
def test_greedy_generation_is_token_identical(case):
    model = random_model(small_config(**CASES[case]), seed=3)
    hf = hf_twin(model)
    prompt = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=32, do_sample=False, min_new_tokens=32,
                             pad_token_id=0)[0, 7:].tolist()
        ids = prompt[0].tolist()
        for _ in range(32):
            x = torch.tensor(ids)
            ids.append(int(model.logits(model(x, torch.arange(len(ids)))[-1]).argmax()))
    assert ids[7:] == theirs


def test_packed_documents_do_not_attend_across():
    model = random_model(small_config())
    gen = torch.Generator().manual_seed(5)
    docs = [torch.randint(0, 256, (n,), generator=gen) for n in (5, 17, 1, 9)]
    with torch.no_grad():
        alone = torch.cat([model(d, torch.arange(len(d))) for d in docs])
        packed = model(torch.cat(docs), torch.cat([torch.arange(len(d)) for d in docs]),
                       seqlens=[len(d) for d in docs])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_bad_shapes_are_reported():
    model = random_model(small_config())
    ids = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="seqlens"):
        model(ids, torch.arange(10), seqlens=[4, 4])
    with pytest.raises(ValueError, match="positions shape"):
        model(ids, torch.arange(9))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_log_softmax_and_have_gradients(temperature):
    model = random_model(small_config(tie_word_embeddings=False))
    ids = torch.randint(0, 256, (23,), generator=torch.Generator().manual_seed(6))
    targets = torch.roll(ids, -1)
    hidden = model(ids, torch.arange(23))
    chunked = model.token_logprobs(hidden, targets, temperature, chunk=5)
    full = F.log_softmax(model.logits(hidden).float() / temperature, -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    g1 = torch.autograd.grad(chunked.sum(), model.lm_head.weight, retain_graph=True)[0]
    g2 = torch.autograd.grad(full.sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    via_forward = model(ids, torch.arange(23), targets=targets, temperature=temperature)
    torch.testing.assert_close(via_forward, chunked)


def test_token_entropy_equals_the_full_distributions_and_has_gradients():
    model = random_model(small_config())
    ids = torch.randint(0, 256, (19,), generator=torch.Generator().manual_seed(7))
    hidden = model(ids, torch.arange(19))
    logprobs, entropy = model.token_logprobs(hidden, torch.roll(ids, -1), 0.8, chunk=4, entropy=True)
    log_p = F.log_softmax(model.logits(hidden).float() / 0.8, -1)
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logprobs, model.token_logprobs(hidden, torch.roll(ids, -1), 0.8))
    (grad,) = torch.autograd.grad(entropy.sum(), model.lm_head.weight)
    assert grad.abs().sum() > 0


def test_qwen3_4b_on_meta_has_transformers_names_shapes_and_size():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = ModelConfig.preset("qwen3-4b")
    with torch.device("meta"):
        ours = Qwen3(config)
        theirs = Qwen3ForCausalLM(Qwen3Config(**config.to_hf_dict()))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 4_022_468_096 == config.num_parameters()


def test_compiled_blocks_match_eager_in_training_and_compile_once_for_every_length():
    """Qwen3.compile_blocks: packed documents of two different layouts give the eager model's hidden states and
    gradients, from one graph per compiled part (dynamic shapes); a forward through a KV cache stays eager."""
    from torch._dynamo.utils import counters

    eager = random_model(small_config(num_hidden_layers=3)).train()
    compiled = random_model(small_config(num_hidden_layers=3)).train()
    compiled.compile_blocks()
    gen = torch.Generator().manual_seed(3)
    counters.clear()
    for lengths in ((17, 40, 9), (33, 21)):
        ids = torch.randint(0, 256, (sum(lengths),), generator=gen)
        positions = torch.cat([torch.arange(n) for n in lengths])
        outputs = [m(ids, positions, seqlens=list(lengths)) for m in (eager, compiled)]
        torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
        for model, out in zip((eager, compiled), outputs):
            model.zero_grad()
            out.square().mean().backward()
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert counters["stats"]["unique_graphs"] == 2

    class Cache:  # attends each token to itself: only the path through the blocks matters here
        def attend(self, layer, q, k, v):
            return v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)

    counters.clear()
    with torch.no_grad():
        ids = torch.arange(5)
        torch.testing.assert_close(compiled(ids, ids, cache=Cache()), eager(ids, ids, cache=Cache()))
    assert counters["stats"]["unique_graphs"] == 0
