"""Process groups, FSDP2 sharding, mixed precision and activation checkpointing, applied from outside the model.

Under torchrun (WORLD_SIZE in the environment) every rank joins one process group (nccl on CUDA, gloo on CPU) and
the model is sharded with `fully_shard`: one group per transformer block plus the root, which holds the embeddings,
the final norm and the (tied) head. A plain `python` run uses no process group and an unsharded model.
"""
from __future__ import annotations

import datetime
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

# Qwen3.forward returns a view of its logprobs; nothing here modifies it in place, which is what the warning is about.
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False  # a process group exists and the model is sharded

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join torchrun's process group if launched by torchrun; pick this rank's device."""
    launched = launched_by_torchrun()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda'")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
    torch_device = torch.device(device, local_rank) if device == "cuda" else torch.device("cpu")
    if not launched:
        return DistEnv(device=torch_device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=torch_device if device == "cuda" else None)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, torch_device, distributed=True)


def shutdown(env: DistEnv):
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int):
    """End the process with `code`. A torchrun worker ends at once, without the interpreter's teardown: gloo's
    worker threads free a finished collective's tensors after the caller has been told it is done, freeing a tensor
    that Python has seen takes the GIL, and a thread that asks for it while the interpreter finalizes is unwound
    through a noexcept destructor. The process then aborts ("terminate called without an active exception") after
    a run that succeeded. The run's files are closed by then; stdout and stderr are flushed here."""
    if launched_by_torchrun():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def barrier(env: DistEnv):
    if env.distributed:
        dist.barrier()


def all_reduce_sum(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        x = x.clone()
        dist.all_reduce(x)
    return x


def broadcast_object(obj, env: DistEnv):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def apply_activation_checkpointing(model: nn.Module):
    """Recompute each block's activations in backward instead of keeping them."""
    layers = model.model.layers
    for i, block in enumerate(layers):
        layers[i] = checkpoint_wrapper(block)


def shard(model: nn.Module, *, bf16_params: bool):
    """FSDP2: one group per block, then the root. bf16_params casts parameters to bf16 for compute and reduces
    gradients in fp32; the fp32 sharded parameters stay the optimizer's master copy."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params \
        else MixedPrecisionPolicy()
    layers = model.model.layers
    for i, block in enumerate(layers):
        # The last block is gathered again at once for backward, so keeping it unsharded saves an all-gather.
        fully_shard(block, mp_policy=policy, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mp_policy=policy)
    # The trainer runs the head on the supervised positions only, in a call of its own: gather the root's
    # parameters (embeddings, final norm, head) for it as for forward.
    register_fsdp_forward_method(model, "token_logprobs")


def set_gradient_sync(model: nn.Module, enabled: bool):
    """Whether the next backward reduce-scatters the gradients (a sharded model only). Off, FSDP2 accumulates
    unsharded gradients on each rank instead: the micro-batches of a step but the last run without communication."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def load_full_state(model: nn.Module, state: dict | None, env: DistEnv):
    """Fill a (sharded) model from a full state dict that only rank 0 holds."""
    if env.distributed:
        set_model_state_dict(model, state if env.is_main else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_state(model: nn.Module) -> dict:
    """Full tensors on the CPU of rank 0 (an empty dict elsewhere); every rank must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Total gradient norm over all ranks' shards; gradients are scaled down when it exceeds max_norm (> 0)."""
    params = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):  # partial norms of the shards -> the global norm
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
