"""The PPO critic: the policy's architecture with a scalar value head on the final hidden state.

Its body starts from the policy's starting weights (or a checkpoint of its own); the head starts at zero, so the
first values are 0 and the first advantages are the returns.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

from ..model import Qwen3
from ..train import distributed
from ..train.distributed import DistEnv


class Critic(nn.Module):
    def __init__(self, body: Qwen3):
        super().__init__()
        self.body = body
        self.value_head = nn.Linear(body.config.hidden_size, 1, bias=True)

    def forward(self, input_ids, positions, *, seqlens=None):
        """Hidden states (T, hidden) of the packed stream; `values` maps chosen rows to scalars."""
        return self.body(input_ids, positions, seqlens=seqlens)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> (N,) in fp32."""
        return self.value_head(hidden).squeeze(-1).float()


def build_critic(body_state: dict | None, policy_config, env: DistEnv, bf16_params: bool,
                 activation_checkpointing: bool) -> Critic:
    """A critic on this rank's device, sharded like the policy under torchrun; `body_state` (full fp32 weights of
    the body, needed on rank 0 only) fills its body."""
    if not env.distributed:
        critic = Critic(Qwen3(policy_config))
        critic.body.load_state_dict(body_state)
        with torch.no_grad():
            critic.value_head.weight.zero_()
            critic.value_head.bias.zero_()
        if activation_checkpointing:
            distributed.apply_activation_checkpointing(critic.body)
        return critic.to(env.device)
    with torch.device("meta"):
        critic = Critic(Qwen3(policy_config))
    if activation_checkpointing:
        distributed.apply_activation_checkpointing(critic.body)
    distributed.shard(critic.body, bf16_params=bf16_params)
    fully_shard(critic)
    register_fsdp_forward_method(critic, "values")
    critic.to_empty(device=env.device)
    state = None
    if env.is_main:
        state = {f"body.{k}": v for k, v in body_state.items()}
        state["value_head.weight"] = torch.zeros(1, policy_config.hidden_size)
        state["value_head.bias"] = torch.zeros(1)
    distributed.load_full_state(critic, state, env)
    return critic

