"""The weights the sampler reads, colocated with the trainer: no second model process, no HTTP.

One unsharded process whose rollout dtype is the training dtype samples with the training module itself (no
copy): an update is visible to the next rollout at once. Otherwise (FSDP2 shards, or bf16 rollouts of fp32 master
weights) each rank keeps a full inference copy and refreshes it before each rollout parameter by parameter, each
one all-gathered from its shards, copied and freed, so the extra peak memory is one parameter.
"""
from __future__ import annotations

import time

import torch
from torch.distributed.tensor import DTensor

from ..model import Qwen3
from ..train.distributed import DistEnv

_WRAPPER = "_checkpoint_wrapped_module."  # activation checkpointing's name for the wrapped block


def rollout_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[setting]


class RolloutWeights:
    def __init__(self, policy: Qwen3, env: DistEnv, dtype: torch.dtype):
        master = next(policy.parameters())
        self.shared = not env.distributed and master.dtype == dtype
        if self.shared:
            self.model = policy
            return
        with torch.device(env.device):
            self.model = Qwen3(policy.config)
        self.model.to(dtype).eval().requires_grad_(False)
        self._targets = dict(self.model.named_parameters())

    def refresh(self, policy: Qwen3) -> float:
        """Copy the policy's current weights into the inference copy; returns the seconds it took."""
        if self.shared:
            return 0.0
        start = time.perf_counter()
        with torch.no_grad():
            for name, param in policy.named_parameters():
                full = param.full_tensor() if isinstance(param, DTensor) else param
                self._targets[name.replace(_WRAPPER, "")].copy_(full)
                del full
        return time.perf_counter() - start
