"""Supervised fine-tuning: AdamW with warmup + cosine, gradient accumulation to a global batch, token-mean loss.

The loss of a step is the sum of -logprob over every supervised token of the global batch divided by their global
count, so neither the micro-batch split nor the number of ranks changes it. Each micro-batch's gradient is scaled
by world_size / count before FSDP averages gradients over ranks, which turns that average into the global sum.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, distributed, run_config
from .config import ModelConfig
from .data import BatchPlanner, DataPosition, MicroBatch, load_sft_dataset
from .distributed import DistEnv
from .model import Qwen3
from .tokenizer import Tokenizer
from .weights import load_model, resolve_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense bf16 peak of one device, for MFU (set peak_tflops for anything else).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


@dataclass
class SFTConfig:
    # where the run lives; resume: "auto" (latest checkpoint of run_dir, if any), "never", or a checkpoint path
    run_dir: str = "runs/sft"
    resume: str = "auto"
    # model: a Hugging Face checkpoint (dir or hub id), or a preset trained from scratch with `arch` overrides
    model: str = ""
    model_preset: str = ""
    arch: dict = field(default_factory=dict)
    init_std: float = 0.02
    tokenizer: str = ""  # directory with tokenizer.json; default: the model's directory
    # data
    train_files: list[str] = field(default_factory=list)
    cutoff_len: int = 65536
    overlong: str = "truncate"  # truncate | drop
    bad_lines: str = "fail"  # fail | skip
    pack_tokens: int = 65536  # most input tokens of one micro-batch on one rank
    global_batch: int = 128
    batch_unit: str = "sequences"  # sequences | tokens
    epochs: float = 1.0
    max_steps: int = 0  # > 0: the schedule has exactly this many steps (epochs repeat as needed)
    # > 0: stop (checkpoint and export) after this many steps of the schedule, which keeps its full length: an early
    # model of the same run; a later run with a larger value continues it from the checkpoint
    stop_after_steps: int = 0
    # > 0: the loss also counts the tokens the policy does not generate (system prompt, question, tool responses),
    # each with this weight relative to a supervised token; the logged loss stays the supervised one
    context_loss_weight: float = 0.0
    # > 0: train for this many minutes of wall-clock time instead of a step count; warmup and cosine run over the
    # time budget and training stops when it is spent (or earlier, when epochs / max_steps are done)
    budget_minutes: float = 0.0
    seed: int = 0
    eval_files: list[str] = field(default_factory=list)  # held-out conversations: their token-mean loss is logged
    eval_every: int = 0  # steps; 0: evaluate after the last step only
    # optimisation
    lr: float = 2e-5
    min_lr_ratio: float = 0.0
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
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads per process; 0 keeps torch's default (torchrun sets 1)
    # outputs
    log_every: int = 1
    checkpoint_every: int = 0  # steps; 0: no periodic checkpoints
    keep_checkpoints: int = 2
    export: bool = True  # write run_dir/final in the Hugging Face layout at the end
    export_dtype: str = ""  # default: the model config's torch_dtype
    peak_tflops: float = 0.0  # per device, for MFU; 0: looked up from the GPU name

    def __post_init__(self):
        choices = {"overlong": ("truncate", "drop"), "bad_lines": ("fail", "skip"),
                   "batch_unit": ("sequences", "tokens"), "precision": ("auto", "bf16", "fp32"),
                   "bf16_mode": ("auto", "fsdp", "autocast"), "device": ("auto", "cpu", "cuda"),
                   "export_dtype": ("", *DTYPES)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise run_config.RunConfigError(f"{key}={getattr(self, key)!r}: expected one of {allowed}")
        for key in ("cutoff_len", "pack_tokens", "global_batch", "log_every"):
            if getattr(self, key) <= 0:
                raise run_config.RunConfigError(f"{key}={getattr(self, key)} must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise run_config.RunConfigError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.context_loss_weight < 0:
            raise run_config.RunConfigError(f"context_loss_weight={self.context_loss_weight} must be >= 0")
        if self.budget_minutes < 0:
            raise run_config.RunConfigError(f"budget_minutes={self.budget_minutes} must be >= 0 (0: no time budget)")
        if self.stop_after_steps < 0:
            raise run_config.RunConfigError(f"stop_after_steps={self.stop_after_steps} must be >= 0 (0: run the "
                                            "whole schedule)")


# --- schedule -----------------------------------------------------------------------------------------------------
class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps (the first step already non-zero), then cosine to min_ratio."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float):
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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


def build_optimizer(model, cfg: SFTConfig, total_steps: int):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if cfg.budget_minutes > 0:
        schedule = TimedWarmupCosine(cfg.budget_minutes * 60, cfg.warmup_ratio, cfg.min_lr_ratio)
    else:
        schedule = WarmupCosine(total_steps, math.ceil(cfg.warmup_ratio * total_steps), cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler


# --- model --------------------------------------------------------------------------------------------------------
def model_config(cfg: SFTConfig, tokenizer: Tokenizer) -> ModelConfig:
    if bool(cfg.model) == bool(cfg.model_preset):
        raise run_config.RunConfigError("set exactly one of model=PATH (a Hugging Face checkpoint) or "
                                        "model_preset=NAME (train from scratch)")
    if cfg.model:
        if cfg.arch:
            raise run_config.RunConfigError(f"arch overrides {sorted(cfg.arch)} apply to model_preset only; "
                                            f"model={cfg.model} brings its own config.json")
        return ModelConfig.from_json(resolve_checkpoint(cfg.model))
    arch = {"vocab_size": tokenizer.vocab_size, **cfg.arch}
    try:
        return ModelConfig.preset(cfg.model_preset).replace(**arch)
    except TypeError as e:
        raise run_config.RunConfigError(f"arch: {e}") from None


def full_model_state(cfg: SFTConfig, mcfg: ModelConfig) -> dict:
    """The starting weights in fp32 on the CPU: the checkpoint's, or a seeded random init."""
    if cfg.model:
        return load_model(cfg.model, dtype=torch.float32).state_dict()
    model = Qwen3(mcfg.replace(torch_dtype="float32"))
    model.init_weights(std=cfg.init_std, generator=torch.Generator().manual_seed(cfg.seed))
    return model.state_dict()


def build_model(cfg: SFTConfig, mcfg: ModelConfig, env: DistEnv, bf16_params: bool) -> Qwen3:
    """fp32 master weights; sharded under torchrun (only rank 0 reads the starting weights, then broadcasts)."""
    if not env.distributed:
        model = Qwen3(mcfg)
        model.load_state_dict(full_model_state(cfg, mcfg))
        model = model.to(env.device)
        if cfg.activation_checkpointing:
            distributed.apply_activation_checkpointing(model)
        return model
    with torch.device("meta"):
        model = Qwen3(mcfg)
    if cfg.activation_checkpointing:
        distributed.apply_activation_checkpointing(model)
    distributed.shard(model, bf16_params=bf16_params)
    model.to_empty(device=env.device)
    if mcfg.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("sharding untied lm_head.weight from model.embed_tokens.weight")
    distributed.load_full_state(model, full_model_state(cfg, mcfg) if env.is_main else None, env)
    return model


def resolve_precision(cfg: SFTConfig, env: DistEnv) -> tuple[str, str]:
    """(precision, bf16_mode) with "auto" decided for this device."""
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if env.device.type == "cuda" or cpu_has_bf16() else "fp32"
    mode = cfg.bf16_mode
    if mode == "auto":
        mode = "fsdp" if env.distributed and env.device.type == "cuda" else "autocast"
    if precision == "bf16" and mode == "fsdp" and not env.distributed:
        raise run_config.RunConfigError("bf16_mode='fsdp' needs a sharded model (launch with torchrun)")
    return precision, mode


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively; without AVX512-BF16 or AMX, bf16 matmuls are slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --- one step -----------------------------------------------------------------------------------------------------
def token_nll(model, batch: MicroBatch, device, autocast_dtype: torch.dtype | None,
              every_target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """-logprob of the scored targets of one packed micro-batch, and their supervision weights.

    Scored are the supervised targets (the head never runs on prompts and tool responses), or with
    `every_target` all of them. A micro-batch without supervised targets (a rank with nothing to do) still scores
    one position, with weight 0, so that its backward pass (and FSDP's gradient collectives) runs like every
    other rank's.
    """
    batch = batch.to(device)
    supervised = batch.weights.nonzero().squeeze(1)
    if not len(supervised):
        scored = torch.zeros(1, dtype=torch.long, device=device)
    elif every_target:
        scored = torch.arange(len(batch.targets), device=device)
    else:
        scored = supervised
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with autocast:
        hidden = model(batch.input_ids, batch.positions, seqlens=batch.seqlens)
        logprobs = model.token_logprobs(hidden[scored], batch.targets[scored])
    return -logprobs, batch.weights[scored]


def summed_nll(model, batch: MicroBatch, device, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Sum of -logprob over the supervised targets of one packed micro-batch."""
    nll, weights = token_nll(model, batch, device, autocast_dtype)
    return (nll * weights).sum()


def micro_step(model, batch: MicroBatch, scale: float, device, autocast_dtype: torch.dtype | None,
               context_weight: float = 0.0) -> torch.Tensor:
    """Forward and backward of one packed micro-batch; returns its summed supervised -logprob (detached).

    With context_weight > 0 the objective also counts every other target (system prompt, question, tool
    responses) with that weight: a language-modelling loss on the context, which gives a model trained from
    scratch many more examples of copying names and values than its own turns hold.
    """
    nll, weights = token_nll(model, batch, device, autocast_dtype, every_target=context_weight > 0)
    supervised = (nll * weights).sum()
    objective = supervised + context_weight * (nll * (1 - weights)).sum() if context_weight > 0 else supervised
    (objective * scale).backward()
    return supervised.detach()


def evaluate(model, planner: BatchPlanner, env: DistEnv, autocast_dtype: torch.dtype | None) -> float:
    """Token-mean loss over the whole evaluation set (the planner's single step), without gradients."""
    batch = planner.batch(DataPosition(), env.rank, env.world_size)
    nll = torch.zeros((), dtype=torch.float64, device=env.device)
    with torch.no_grad():
        for micro in batch.micro_batches:
            nll += summed_nll(model, micro, env.device, autocast_dtype).double()
    return float(distributed.all_reduce_sum(nll, env)) / batch.supervised_tokens


def optimizer_step(model, optimizer, scheduler, grad_clip: float) -> float:
    grad_norm = distributed.clip_grad_norm(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def step_flops(mcfg: ModelConfig, doc_lengths: list[int]) -> float:
    """Training FLOPs (forward + backward) of the matmuls and of causal attention over the given documents."""
    embedding = mcfg.vocab_size * mcfg.hidden_size
    matmul_params = mcfg.num_parameters() - (0 if mcfg.tie_word_embeddings else embedding)  # head counts, lookup not
    attention = 6 * mcfg.num_hidden_layers * mcfg.num_attention_heads * mcfg.head_dim * sum(n * n for n in doc_lengths)
    return 6.0 * matmul_params * sum(doc_lengths) + attention


def peak_flops(cfg: SFTConfig, env: DistEnv) -> float | None:
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops * 1e12
    if env.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(env.device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


# --- logging ------------------------------------------------------------------------------------------------------
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
        if self.active:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- the run ------------------------------------------------------------------------------------------------------
def train(cfg: SFTConfig) -> Path:
    """Run (or resume) SFT as configured; returns the run directory."""
    env = distributed.init(cfg.device)
    try:
        return _train(cfg, env)
    finally:
        distributed.shutdown(env)


def _train(cfg: SFTConfig, env: DistEnv) -> Path:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    tokenizer_dir = cfg.tokenizer or (str(resolve_checkpoint(cfg.model)) if cfg.model else "")
    if not tokenizer_dir:
        raise run_config.RunConfigError("tokenizer=DIR is required with model_preset (a directory with tokenizer.json)")
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    mcfg = model_config(cfg, tokenizer)
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise run_config.RunConfigError(f"tokenizer {tokenizer_dir} has {tokenizer.vocab_size} tokens but the model's "
                                        f"vocab_size is {mcfg.vocab_size}")

    run_dir = Path(cfg.run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(env)
    log = RunLog(run_dir, env)
    resume_from = _resume_path(cfg, run_dir)
    _save_config(cfg, run_dir, env, log, resuming=resume_from is not None)
    if resume_from is None and env.is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # left by a run that died before its first checkpoint
    planner, eval_planner = _load_data(cfg, tokenizer, log)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else planner.total_steps(cfg.epochs)
    if total_steps <= 0:
        raise run_config.RunConfigError(f"no full global batch: {len(planner.dataset)} conversations, "
                                        f"global_batch={cfg.global_batch} {cfg.batch_unit}")

    precision, bf16_mode = resolve_precision(cfg, env)
    autocast_dtype = torch.bfloat16 if precision == "bf16" and bf16_mode == "autocast" else None
    model = build_model(cfg, mcfg, env, bf16_params=precision == "bf16" and bf16_mode == "fsdp")
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg, total_steps)
    position, step = DataPosition(), 0
    checkpoint.remove_partial(run_dir, env)
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer, scheduler, env)
        step, position = state["step"], DataPosition(**state["data_position"])
        if state["data_fingerprint"] != planner.dataset.fingerprint():
            log.info(f"warning: the training data differ from those of {resume_from}; the data position may not "
                     "mean the same documents")
        log.info(f"resumed from {resume_from} at step {step} (epoch {position.epoch}, step {position.step} of it)")

    peak = peak_flops(cfg, env)
    clock = scheduler.lr_lambdas[0] if cfg.budget_minutes > 0 else None
    if clock:  # a resumed schedule keeps its elapsed time but takes this config's budget
        clock.budget_s, clock.warmup_ratio, clock.min_ratio = cfg.budget_minutes * 60, cfg.warmup_ratio, cfg.min_lr_ratio
    stop_step = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps > 0 else total_steps
    length = (f"{cfg.budget_minutes:g} minutes (at most {total_steps} steps)" if clock else f"{total_steps} steps")
    if stop_step < total_steps:
        length += f", stopping after step {stop_step}"
    log.info(f"model: {mcfg.num_parameters() / 1e6:.1f}M parameters, {env.world_size} process(es) on "
             f"{env.device.type}, precision {precision}" + (f" ({bf16_mode})" if precision == "bf16" else "")
             + f", activation checkpointing {'on' if cfg.activation_checkpointing else 'off'}; {length} of "
               f"{cfg.global_batch} {cfg.batch_unit}, {planner.steps_in_epoch(0)} steps per epoch")
    started, start_step = time.perf_counter(), step
    budget_before = clock.elapsed_s if clock else 0.0  # time spent before a resume
    out_of_time = False
    while step < stop_step and not out_of_time:
        t0 = time.perf_counter()
        batch = planner.batch(position, env.rank, env.world_size)
        scale = env.world_size / batch.supervised_tokens
        nll = torch.zeros((), dtype=torch.float64, device=env.device)
        for micro in batch.micro_batches:
            nll += micro_step(model, micro, scale, env.device, autocast_dtype, cfg.context_loss_weight).double()
        loss = float(distributed.all_reduce_sum(nll, env)) / batch.supervised_tokens
        lr = scheduler.get_last_lr()[0]
        if clock:
            clock.elapsed_s = budget_before + _agreed_seconds(time.perf_counter() - started, env)
            out_of_time = clock.elapsed_s >= clock.budget_s
        grad_norm = optimizer_step(model, optimizer, scheduler, cfg.grad_clip)
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        seconds = time.perf_counter() - t0
        step += 1
        position = planner.advance(position)
        record = {"step": step, "epoch": round(_epoch_progress(planner, position), 4), "loss": loss, "lr": lr,
                  "grad_norm": grad_norm, "sequences": batch.sequences, "tokens": batch.tokens,
                  "supervised_tokens": batch.supervised_tokens, "micro_batches": len(batch.micro_batches),
                  "step_s": round(seconds, 4), "tokens_per_s": batch.tokens / seconds}
        if peak:
            record["mfu"] = step_flops(mcfg, batch.doc_lengths) / seconds / (peak * env.world_size)
        last = step == stop_step or out_of_time
        if clock:
            record["train_s"] = round(clock.elapsed_s, 2)
        if eval_planner and (last or (cfg.eval_every > 0 and step % cfg.eval_every == 0)):
            record["eval_loss"] = evaluate(model, eval_planner, env, autocast_dtype)
            log.info(f"step {step}: held-out loss {record['eval_loss']:.4f}")
        log.metrics(record)
        if step % cfg.log_every == 0 or last:
            _progress_line(log, record, stop_step, time.perf_counter() - started, step - start_step, clock)
        stopped_early = last and step < total_steps and not out_of_time  # always checkpointed: a later run continues
        if stopped_early or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and not last):
            path = checkpoint.save(run_dir, step, model, optimizer, scheduler,
                                   {"data_position": vars(position), "data_fingerprint": planner.dataset.fingerprint()},
                                   env, keep=cfg.keep_checkpoints)
            log.info(f"checkpoint {path}")
    if cfg.export:
        dtype = DTYPES.get(cfg.export_dtype or mcfg.torch_dtype)
        out = checkpoint.export_hf(model, run_dir / "final", tokenizer, tokenizer_dir, env, dtype=dtype)
        log.info(f"exported {out} (Hugging Face layout, tokenizer included)")
    return run_dir


def _load_data(cfg: SFTConfig, tokenizer: Tokenizer, log: RunLog) -> tuple[BatchPlanner, BatchPlanner | None]:
    """The training plan and, with eval_files, a plan that covers the whole evaluation set in one step."""
    settings = dict(cutoff_len=cfg.cutoff_len, overlong=cfg.overlong, bad_lines=cfg.bad_lines, log=log.info)
    dataset, stats = load_sft_dataset(cfg.train_files, tokenizer, **settings)
    log.info(f"data: {stats.summary()}")
    planner = BatchPlanner(dataset, global_batch=cfg.global_batch, unit=cfg.batch_unit, pack_tokens=cfg.pack_tokens,
                           seed=cfg.seed)
    if not cfg.eval_files:
        return planner, None
    eval_set, eval_stats = load_sft_dataset(cfg.eval_files, tokenizer, **settings)
    log.info(f"eval data: {eval_stats.summary()}")
    return planner, BatchPlanner(eval_set, global_batch=len(eval_set), unit="sequences", pack_tokens=cfg.pack_tokens,
                                 seed=cfg.seed)


def _progress_line(log: RunLog, record: dict, last_step: int, elapsed: float, steps_done: int,
                   clock: TimedWarmupCosine | None):
    """One log line; the eta counts to `last_step` (the end of the schedule, or stop_after_steps)."""
    mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
    if clock:
        where = f"step {record['step']}"
        timing = f"{_duration(clock.elapsed_s)} of {_duration(clock.budget_s)}"
    else:
        where = f"step {record['step']}/{last_step}"
        eta = elapsed / steps_done * (last_step - record["step"])
        timing = f"{_duration(elapsed)} elapsed, eta {_duration(eta)}"
    log.info(f"{where} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | grad norm {record['grad_norm']:.3f} | "
             f"{record['tokens_per_s']:,.0f} tok/s{mfu} | {timing}")


def _agreed_seconds(seconds: float, env: DistEnv) -> float:
    """The ranks' mean of a duration, so that every rank takes the same decision to stop."""
    if not env.distributed:
        return seconds
    return float(distributed.all_reduce_sum(torch.tensor(seconds, dtype=torch.float64, device=env.device), env)
                 ) / env.world_size


def _epoch_progress(planner: BatchPlanner, position: DataPosition) -> float:
    return position.epoch + position.step / max(1, planner.steps_in_epoch(position.epoch))


def _resume_path(cfg: SFTConfig, run_dir: Path) -> Path | None:
    if cfg.resume == "never":
        if checkpoint.list_checkpoints(run_dir):
            raise run_config.RunConfigError(f"resume=never but {run_dir} holds checkpoints of an earlier run; "
                                            "choose another run_dir or resume=auto")
        return None
    if cfg.resume == "auto":
        found = checkpoint.list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if not (path / checkpoint.TRAINER_STATE).is_file():
        raise run_config.RunConfigError(f"resume={cfg.resume}: not a checkpoint directory")
    return path


def _save_config(cfg: SFTConfig, run_dir: Path, env: DistEnv, log: RunLog, resuming: bool):
    """config.toml of the run; on resume, a config that differs is kept beside it and the differences logged."""
    if not env.is_main:
        return
    path = run_dir / "config.toml"
    if resuming and path.is_file():
        previous = run_config.to_dict(run_config.load(SFTConfig, path))
        changed = {k: v for k, v in run_config.to_dict(cfg).items() if previous.get(k) != v}
        if changed:
            log.info(f"resuming with changed settings {changed}")
            path = run_dir / f"config.resume-{int(time.time())}.toml"
        else:
            return
    run_config.save(cfg, path)
