"""Shared test helpers: small random configs, their transformers twins, driving a sampler."""
import torch

from litere.config import ModelConfig
from litere.model import Qwen3


def small_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rope_theta=5e6, max_position_embeddings=1024,
                  tie_word_embeddings=True, torch_dtype="float32")
    return ModelConfig(**{**fields, **overrides})


def random_model(config: ModelConfig, seed: int = 0) -> Qwen3:
    model = Qwen3(config)
    model.init_weights(std=0.1, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-trivial norm weights so that a missed norm shows up
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def hf_twin(model: Qwen3):
    """transformers' Qwen3ForCausalLM with the same weights."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf = Qwen3ForCausalLM(Qwen3Config(**model.config.to_hf_dict()))
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.to(model.model.embed_tokens.weight.dtype).eval()


def positions_for(ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[-1]).expand(ids.shape)


def random_prompts(vocab_size: int, *lengths: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in lengths]


def drain(sampler) -> dict:
    """Step a sampler until it has no work; its outputs by request id."""
    outputs = {}
    while sampler.has_work():
        for out in sampler.step():
            outputs[out.request_id] = out
    return outputs


def block_writes_in_reverse(monkeypatch) -> list:
    """Make every Sampler apply its queued block-table writes in reverse order, as CUDA may apply a batched write to
    repeated cells in any order, and check after each application that every running sequence's row holds its
    blocks. Returns the list the queued block copies are collected in."""
    from litere.sampler import Sampler

    apply, copies = Sampler._apply_block_updates, []

    def reversed_writes(self):
        scheduler = self.scheduler
        scheduler.table_writes = dict(reversed(scheduler.table_writes.items()))
        copies.extend(scheduler.block_copies)
        apply(self)
        for seq in scheduler.running:
            for s in (seq, *seq.forks):
                if s.row is not None:
                    assert self.block_table[s.row, :len(s.blocks)].tolist() == s.blocks
    monkeypatch.setattr(Sampler, "_apply_block_updates", reversed_writes)
    return copies
