"""The trainer core shared by SFT and RL: settings, model building, precision, optimizer and schedules, the
optimizer step, the run log, MFU, resume and export.

A stage (sft.py, rl/loop.py) owns its data and its loss; everything here is the same for both.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import cpu, run_config
from ..config import ModelConfig
from ..files import atomic_write
from ..model import Qwen3
from ..tokenizer import Tokenizer
from ..weights import load_model, resolve_checkpoint
from . import checkpoint, distributed
from .distributed import DistEnv

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense bf16 peak of one device, for MFU (set peak_tflops for anything else).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


@dataclass
class TrainerConfig:
    """Settings every stage has; a stage's config adds its data and loss settings."""
    # where the run lives; resume: "auto" (latest checkpoint of run_dir, if any), "never", or a checkpoint path
    run_dir: str = "runs/train"
    resume: str = "auto"
    # model: a Hugging Face checkpoint (dir or hub id), or a preset trained from scratch with `arch` overrides
    model: str = ""
    model_preset: str = ""
    arch: dict = field(default_factory=dict)
    init_std: float = 0.02
    tokenizer: str = ""  # directory with tokenizer.json; default: the model's directory
    seed: int = 0
    # optimisation
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    # precision and memory
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with bf16 instructions, else fp32) | bf16 | fp32
    bf16_mode: str = "auto"  # auto (FSDP policy under torchrun on CUDA, else autocast) | fsdp | autocast
    activation_checkpointing: bool = False
    # torch.compile each block's work around attention (norms, projections, rotary, SwiGLU, residuals) in the
    # training forward and backward: a float path of its own (Qwen3.compile_blocks). "auto": where the run trains
    # on a CPU under bf16 autocast, the one place it was measured faster (the demo's SFT 1.20x on 2 cores of an
    # Intel Xeon with AMX; in fp32 0.99x for its SFT, 0.95x for its RL update: BENCHMARKS.md, "Compiled blocks")
    compile_blocks: bool | str = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads per process; 0 keeps torch's default (torchrun sets 1)
    # outputs
    log_every: int = 1
    checkpoint_every: int = 0  # steps; 0: no periodic checkpoints
    keep_checkpoints: int = 2
    export: bool = True  # write run_dir/final in the Hugging Face layout at the end
    export_dtype: str = ""  # default: the model config's torch_dtype
    peak_tflops: float = 0.0  # per device, for MFU; 0: looked up from the GPU name
    # a step whose loss or gradient is not finite is skipped (weights, optimizer and schedule unchanged) and
    # counted; this many skipped optimizer steps in a row stop the run (0: never stop)
    max_nonfinite_steps: int = 3

    def __post_init__(self):
        choices = {"precision": ("auto", "bf16", "fp32"), "bf16_mode": ("auto", "fsdp", "autocast"),
                   "device": ("auto", "cpu", "cuda"), "export_dtype": ("", *DTYPES),
                   "compile_blocks": (False, True, "auto")}
        for key, allowed in choices.items():
            check_choice(self, key, allowed)
        check_positive(self, "log_every", "adam_eps", "init_std")
        check_non_negative(self, "lr", "weight_decay", "grad_clip", "threads", "checkpoint_every",
                           "keep_checkpoints", "peak_tflops", "max_nonfinite_steps")
        check_range(self, "warmup_ratio", 0, 1)
        check_range(self, "adam_beta1", 0, 1)
        check_range(self, "adam_beta2", 0, 1)
        self.arch = run_config.check_table(ModelConfig, self.arch, "arch")
        try:
            base = ModelConfig.preset(self.model_preset or "tiny")
        except ValueError as e:
            raise run_config.RunConfigError(f"model_preset={self.model_preset!r}: {e}", key="model_preset") from None
        try:  # the preset and the overrides make a valid architecture
            base.replace(**self.arch)
        except (TypeError, ValueError) as e:
            raise run_config.RunConfigError(f"arch: {e}", key="arch") from None


def check_choice(cfg, key: str, allowed: tuple):
    if getattr(cfg, key) not in allowed:
        raise run_config.RunConfigError(f"{key}={getattr(cfg, key)!r}: expected one of {allowed}", key=key)


def check_positive(cfg, *keys: str):
    for key in keys:
        if not getattr(cfg, key) > 0:
            raise run_config.RunConfigError(f"{key}={getattr(cfg, key)} must be positive", key=key)


def check_non_negative(cfg, *keys: str):
    for key in keys:
        if not getattr(cfg, key) >= 0:
            raise run_config.RunConfigError(f"{key}={getattr(cfg, key)} must be >= 0", key=key)


def check_range(cfg, key: str, low: float, high: float):
    """low <= value < high."""
    if not low <= getattr(cfg, key) < high:
        raise run_config.RunConfigError(f"{key}={getattr(cfg, key)} must be in [{low}, {high})", key=key)


# --- schedules ----------------------------------------------------------------------------------------------------
class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps (the first step already non-zero), then cosine to min_ratio.
    min_ratio = 1 holds the peak: warmup, then constant."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float):
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupHoldDecay:
    """LR multiplier: linear warmup, the peak held, then cosine to min_ratio over the last `decay_steps`
    (warmup-stable-decay). `start_decay(step)` moves the decay earlier, to start after `step` (the trainer calls it
    when a held-out probe says the model is ready); without it the decay starts at total_steps - decay_steps.
    `rewarm(step)` at the end of a decay begins another cycle: back up to `rewarm_peak` times the peak over the
    warmup's length, then the same decay from there (the trainer calls it when a held-out probe says the model has
    not learnt what it should).
    The run ends where the last decay does (`end_step`). The decisions are this object's state, which the
    scheduler's state_dict (and so a checkpoint) keeps."""

    def __init__(self, total_steps: int, warmup_steps: int, decay_steps: int, min_ratio: float,
                 rewarm_peak: float = 1.0):
        self.warmup_steps, self.decay_steps, self.min_ratio = warmup_steps, decay_steps, min_ratio
        self.rewarm_peak = rewarm_peak
        self.decay_start = max(warmup_steps, total_steps - decay_steps)
        self.decay_triggered_at = None
        self.rewarm_starts: list[int] = []

    @property
    def end_step(self) -> int:
        return self.decay_start + self.decay_steps

    def start_decay(self, step: int):
        if self.decay_triggered_at is None and not self.rewarm_starts and step < self.decay_start:
            self.decay_start = self.decay_triggered_at = max(step, self.warmup_steps)

    def rewarm(self, step: int):
        if step != self.end_step:
            raise ValueError(f"a rewarm starts where the decay ends (step {self.end_step}), not at step {step}")
        self.rewarm_starts.append(step)
        self.decay_start = step + max(1, self.warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        peak = self.rewarm_peak if self.rewarm_starts else 1.0
        if self.rewarm_starts and step < self.decay_start:
            ramp = (step - self.rewarm_starts[-1] + 1) / (self.decay_start - self.rewarm_starts[-1])
            return self.min_ratio + (peak - self.min_ratio) * ramp
        progress = min(1.0, max(0, step - self.decay_start) / max(1, self.decay_steps))
        return self.min_ratio + (peak - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TimedWarmupCosine:
    """LR multiplier over a wall-clock budget: linear warmup (from 1%) over the first `warmup_ratio` of the budget,
    then cosine to min_ratio at its end. The training loop sets `elapsed_s` before each scheduler step; the
    scheduler's state (this object's fields) keeps it across a resume."""

    def __init__(self, budget_s: float, warmup_ratio: float, min_ratio: float):
        self.budget_s, self.warmup_ratio, self.min_ratio = budget_s, warmup_ratio, min_ratio
        self.elapsed_s = 0.0

    def __call__(self, step: int) -> float:
        progress = min(1.0, self.elapsed_s / self.budget_s)
        if progress < self.warmup_ratio:
            return max(0.01, progress / self.warmup_ratio)
        decay = (progress - self.warmup_ratio) / (1 - self.warmup_ratio)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * decay))


def build_optimizer(model, cfg: TrainerConfig, schedule):
    """AdamW (no weight decay on norms and other vectors) and a LambdaLR over `schedule(step) -> multiplier`."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def optimizer_step(model, optimizer, scheduler, grad_clip: float, loss: float | None = None) -> tuple[float, bool]:
    """Clip, step, advance the schedule (`scheduler` may be None) and zero the gradients; returns the global
    gradient norm and whether the update was made.

    An update whose gradient norm (over all ranks, so every rank decides the same) or `loss` is NaN or infinite is
    skipped whole: the gradients are zeroed and neither the optimizer (weights, moments, step count) nor the
    schedule moves, so a skipped step changes nothing. NonFiniteGuard counts them."""
    grad_norm = float(distributed.clip_grad_norm(model.parameters(), grad_clip))
    finite = math.isfinite(grad_norm) and (loss is None or math.isfinite(loss))
    if finite:
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, finite


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient; the message names the step and the
    checkpoint to resume from."""


class NonFiniteGuard:
    """Counts the updates that optimizer_step skipped; after `limit` in a row (0: never) the run stops with
    NonFiniteError naming the step and the newest complete checkpoint of `run_dir`."""

    def __init__(self, limit: int, run_dir: Path, log: RunLog | None = None, what: str = "optimizer steps"):
        self.limit, self.run_dir, self.log, self.what = limit, Path(run_dir), log, what
        self.in_a_row = 0
        self.skipped = 0

    def record(self, stepped: bool, step: int):
        """After the update of training step `step` (1-based)."""
        if stepped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped += 1
        if self.limit and self.in_a_row >= self.limit:
            found = checkpoint.list_checkpoints(self.run_dir)
            resume = (f"resume from {found[-1]} (the newest complete checkpoint; resume=auto takes it)" if found
                      else "there is no checkpoint yet, so a rerun starts over")
            message = (f"stopping at step {step}: {self.in_a_row} {self.what} in a row had a non-finite loss or "
                       f"gradient and were skipped (max_nonfinite_steps={self.limit}); {resume}. Lower lr, "
                       "check the data of these steps, or raise max_nonfinite_steps.")
            if self.log:
                self.log.info(message)
            raise NonFiniteError(message)


# --- model --------------------------------------------------------------------------------------------------------
def load_tokenizer(cfg: TrainerConfig) -> tuple[Tokenizer, str]:
    """The run's tokenizer and the directory it came from (tokenizer=DIR, else the model's directory)."""
    tokenizer_dir = cfg.tokenizer or (str(resolve_checkpoint(cfg.model)) if cfg.model else "")
    if not tokenizer_dir:
        raise run_config.RunConfigError("tokenizer=DIR is required with model_preset (a directory with tokenizer.json)")
    return Tokenizer.from_dir(tokenizer_dir), tokenizer_dir


def model_config(cfg: TrainerConfig, tokenizer: Tokenizer) -> ModelConfig:
    if bool(cfg.model) == bool(cfg.model_preset):
        raise run_config.RunConfigError("set exactly one of model=PATH (a Hugging Face checkpoint) or "
                                        "model_preset=NAME (train from scratch)")
    if cfg.model:
        if cfg.arch:
            raise run_config.RunConfigError(f"arch overrides {sorted(cfg.arch)} apply to model_preset only; "
                                            f"model={cfg.model} brings its own config.json")
        mcfg = ModelConfig.from_json(resolve_checkpoint(cfg.model))
    else:
        arch = {"vocab_size": tokenizer.vocab_size, **cfg.arch}
        try:
            mcfg = ModelConfig.preset(cfg.model_preset).replace(**arch)
        except (TypeError, ValueError) as e:  # ValueError: ConfigError of ModelConfig.validate
            raise run_config.RunConfigError(f"arch: {e}", key="arch") from None
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise run_config.RunConfigError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but the "
                                        f"model's vocab_size is {mcfg.vocab_size}")
    return mcfg


def full_model_state(cfg: TrainerConfig, mcfg: ModelConfig) -> dict:
    """The starting weights in fp32 on the CPU: the checkpoint's, or a seeded random init."""
    if cfg.model:
        return load_model(cfg.model, dtype=torch.float32).state_dict()
    model = Qwen3(mcfg.replace(torch_dtype="float32"))
    model.init_weights(std=cfg.init_std, generator=torch.Generator().manual_seed(cfg.seed))
    return model.state_dict()


def build_model(cfg: TrainerConfig, mcfg: ModelConfig, env: DistEnv, bf16_params: bool, state: dict | None = None
                ) -> Qwen3:
    """fp32 master weights; sharded under torchrun (only rank 0 reads the starting weights, then broadcasts).
    `state` replaces the configured starting weights (a full fp32 state dict, needed on rank 0 only)."""
    compiled = blocks_compiled(cfg, env)
    if not env.distributed:
        model = Qwen3(mcfg)
        model.load_state_dict(state if state is not None else full_model_state(cfg, mcfg))
        model = model.to(env.device)
        if compiled:
            model.compile_blocks()
        if cfg.activation_checkpointing:
            distributed.apply_activation_checkpointing(model)
        return model
    with torch.device("meta"):
        model = Qwen3(mcfg)
    if compiled:
        model.compile_blocks()
    if cfg.activation_checkpointing:
        distributed.apply_activation_checkpointing(model)
    distributed.shard(model, bf16_params=bf16_params)
    model.to_empty(device=env.device)
    if mcfg.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("sharding untied lm_head.weight from model.embed_tokens.weight")
    if env.is_main and state is None:
        state = full_model_state(cfg, mcfg)
    distributed.load_full_state(model, state if env.is_main else None, env)
    return model


def resolve_precision(cfg: TrainerConfig, env: DistEnv) -> tuple[str, str]:
    """(precision, bf16_mode) with "auto" decided for this device."""
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if env.device.type == "cuda" or cpu.has_bf16() else "fp32"
    mode = cfg.bf16_mode
    if mode == "auto":
        mode = "fsdp" if env.distributed and env.device.type == "cuda" else "autocast"
    if precision == "bf16" and mode == "fsdp" and not env.distributed:
        raise run_config.RunConfigError("bf16_mode='fsdp' needs a sharded model (launch with torchrun)")
    return precision, mode


def blocks_compiled(cfg: TrainerConfig, env: DistEnv) -> bool:
    """compile_blocks with "auto" decided for this device and precision."""
    if cfg.compile_blocks != "auto":
        return cfg.compile_blocks
    precision, mode = resolve_precision(cfg, env)
    return env.device.type == "cpu" and precision == "bf16" and mode == "autocast"


def step_flops(mcfg: ModelConfig, doc_lengths: list[int]) -> float:
    """Training FLOPs (forward + backward) of the matmuls and of causal attention over the given documents."""
    embedding = mcfg.vocab_size * mcfg.hidden_size
    matmul_params = mcfg.num_parameters() - (0 if mcfg.tie_word_embeddings else embedding)  # head counts, lookup not
    attention = 6 * mcfg.num_hidden_layers * mcfg.num_attention_heads * mcfg.head_dim * sum(n * n for n in doc_lengths)
    return 6.0 * matmul_params * sum(doc_lengths) + attention


def peak_flops(cfg: TrainerConfig, env: DistEnv) -> float | None:
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops * 1e12
    if env.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(env.device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def agreed_seconds(seconds: float, env: DistEnv) -> float:
    """The ranks' mean of a duration, so that every rank takes the same decision to stop."""
    if not env.distributed:
        return seconds
    return float(distributed.all_reduce_sum(torch.tensor(seconds, dtype=torch.float64, device=env.device), env)
                 ) / env.world_size


# --- the run directory --------------------------------------------------------------------------------------------
class RunLog:
    """Progress lines to stdout and train.log, metrics to metrics.jsonl; rank 0 only."""

    def __init__(self, run_dir: Path, env: DistEnv):
        self.run_dir, self.active = run_dir, env.is_main

    def info(self, message: str):
        if self.active:
            print(message, flush=True)
            with (self.run_dir / "train.log").open("a") as f:
                f.write(message + "\n")

    def metrics(self, record: dict):
        """One line of metrics.jsonl; NaN and infinite values are written as null (strict JSON)."""
        if self.active:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(_finite(record), allow_nan=False) + "\n")

    def rewind_metrics(self, step: int):
        """Keep the records of steps <= `step` only: a run resumed from that step's checkpoint writes the later
        steps again."""
        path = self.run_dir / "metrics.jsonl"
        if not self.active or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except json.JSONDecodeError:  # the last line, cut short by a crash after the checkpoint
                pass
        atomic_write(path, "".join(kept))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def resume_path(cfg: TrainerConfig, run_dir: Path, log: RunLog | None = None) -> Path | None:
    """The checkpoint to resume from. resume=auto takes the newest one whose files are whole
    (checkpoint.verify); a newer one that is not (a shard cut short, an unreadable trainer_state.json) is skipped
    and the log says so. CheckpointError when the run has checkpoints and none is usable."""
    if cfg.resume == "never":
        if checkpoint.list_checkpoints(run_dir):
            raise run_config.RunConfigError(f"resume=never but {run_dir} holds checkpoints of an earlier run; "
                                            "choose another run_dir or resume=auto")
        return None
    if cfg.resume == "auto":
        return checkpoint.latest_usable(run_dir, log.info if log else print)
    path = Path(cfg.resume)
    if not (path / checkpoint.TRAINER_STATE).is_file():
        raise run_config.RunConfigError(f"resume={cfg.resume}: not a checkpoint directory")
    checkpoint.verify(path)
    return path


def save_config(cfg: TrainerConfig, run_dir: Path, env: DistEnv, log: RunLog, resuming: bool):
    """config.toml of the run; on resume, a config that differs is kept beside it and the differences logged."""
    if not env.is_main:
        return
    path = run_dir / "config.toml"
    if resuming and path.is_file():
        previous = run_config.to_dict(run_config.load(type(cfg), path))
        changed = {k: v for k, v in run_config.to_dict(cfg).items() if previous.get(k) != v}
        if changed:
            log.info(f"resuming with changed settings {changed}")
            path = run_dir / f"config.resume-{int(time.time())}.toml"
        else:
            return
    run_config.save(cfg, path)


def open_run(cfg: TrainerConfig, env: DistEnv) -> tuple[Path, RunLog, Path | None]:
    """The run directory, its log and the checkpoint to resume from (None: a fresh run). Saves the config and
    removes what a crash left half-written."""
    run_dir = Path(cfg.run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(env)
    log = RunLog(run_dir, env)
    resume_from = resume_path(cfg, run_dir, log)
    save_config(cfg, run_dir, env, log, resuming=resume_from is not None)
    if resume_from is None and env.is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # left by a run that died before its first checkpoint
    checkpoint.remove_partial(run_dir, env)
    return run_dir, log, resume_from


def export(cfg: TrainerConfig, model, mcfg: ModelConfig, run_dir: Path, tokenizer: Tokenizer, tokenizer_dir: str,
           env: DistEnv, log: RunLog, name: str = "final") -> Path:
    """run_dir/name in the Hugging Face layout, tokenizer included."""
    dtype = DTYPES.get(cfg.export_dtype or mcfg.torch_dtype)
    out = checkpoint.export_hf(model, run_dir / name, tokenizer, tokenizer_dir, env, dtype=dtype)
    log.info(f"exported {out} (Hugging Face layout, tokenizer included)")
    return out
