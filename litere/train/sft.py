"""Supervised fine-tuning: gradient accumulation to a global batch, token-mean loss, warmup + cosine.

The loss of a step is the sum of -logprob over every supervised token of the global batch divided by their global
count, so neither the micro-batch split nor the number of ranks changes it. Each micro-batch's gradient is scaled
by world_size / count before FSDP averages gradients over ranks, which turns that average into the global sum.
A step whose loss or gradient is not finite is skipped whole (weights, optimizer state and schedule unchanged; its
batch is consumed) and counted as `skipped_updates` in metrics.jsonl; `max_nonfinite_steps` of them in a row stop
the run with a message that names the checkpoint to resume from.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import run_config
from ..tokenizer import Tokenizer
from . import checkpoint, distributed
from .core import (NonFiniteGuard, RunLog, TimedWarmupCosine, TrainerConfig, WarmupCosine, WarmupHoldDecay,
                   agreed_seconds, blocks_compiled, build_model, build_optimizer, check_choice, check_non_negative,
                   check_positive, duration, export, load_tokenizer, model_config, open_run, optimizer_step,
                   peak_flops, resolve_precision, step_flops)
from .distributed import DistEnv
from .sft_data import BatchPlanner, DataPosition, MicroBatch, load_sft_dataset, recall_drills


# held-out losses a schedule can act on
PROBES = ("eval_loss", "eval_copy_loss", "eval_number_loss", "eval_second_hop_loss")
# eval_second_hop_loss: (assistant turns of a conversation, the turn scored), see HeldOut
SECOND_HOP = (5, 2)


@dataclass
class SFTConfig(TrainerConfig):
    run_dir: str = "runs/sft"
    # data
    train_files: list[str] = field(default_factory=list)
    cutoff_len: int = 65536
    overlong: str = "truncate"  # truncate | drop
    bad_lines: str = "fail"  # fail | skip
    # an assistant message that does not open with "<think>\n" (the agent's layout): "normalize" puts an empty
    # thinking block in front of it, "reject" makes its record bad
    think_layout: str = "normalize"
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
    # with context_loss_weight > 0, false: the context loss leaves out the digit targets that spell a number the
    # conversation has not spelt before (see number_targets): random values nothing predicts, whose loss teaches a
    # small model only the distribution of digits
    context_loss_new_numbers: bool = True
    # the targets that copy a number (digit tokens whose pair (input token, target) occurs earlier in the
    # conversation, see number_targets) count this many times in the objective, supervised or context; 1: once. A
    # small model learns to copy names early and numbers last: its copying heads attend to a number's earlier
    # spelling only after a phase change (BENCHMARKS.md, "Numbers")
    number_copy_weight: float = 1.0
    # > 0 (with context_loss_weight > 0): this many synthetic documents join the training data, lists of keys and
    # two-token numbers recalled in another order (sft_data.recall_drills): copying with no other cue. They did not
    # keep the demo's stalling paths from stalling (BENCHMARKS.md, "Recall drills")
    recall_drills: int = 0
    # > 0: train for this many minutes of wall-clock time instead of a step count; warmup and cosine run over the
    # time budget and training stops when it is spent (or earlier, when epochs / max_steps are done)
    budget_minutes: float = 0.0
    eval_files: list[str] = field(default_factory=list)  # held-out conversations: their token-mean loss is logged
    eval_every: int = 0  # steps; 0: evaluate after the last step only
    eval_limit: int = 0  # > 0: only this many conversations of eval_files, picked as `eval_pick` says
    # "first": the first eval_limit; "spread": evenly spaced through the files, so that files written one kind of
    # conversation after another (the demo's: direct, then 2-hop) give each kind its share
    eval_pick: str = "first"
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    # > 0: warmup, the peak lr held, then the cosine over the last decay_steps of the run (warmup-stable-decay)
    decay_steps: int = 0
    # > 0 (with decay_steps, eval_files, eval_every and max_steps): the decay starts as soon as the held-out probe
    # `decay_probe` is below this value, and the run ends decay_steps later; max_steps bounds the run (the decay then
    # starts decay_steps before it). Probes: eval_loss (the supervised targets), eval_copy_loss (the targets only
    # copying from the context predicts: new names and numbers, see copy_targets), eval_number_loss (the targets
    # that are digit tokens: a small model learns to copy numbers last) or eval_second_hop_loss (nats of the turn
    # that starts a 2-hop conversation's second hop, see HeldOut)
    decay_when_held_out_below: float = 0.0
    decay_probe: str = "eval_loss"
    # > 0 (with decay_steps, eval_files): when a decay ends with the held-out `rewarm_probe` still above this value,
    # the lr goes back up to the peak (over the warmup's steps) and decays again over decay_steps, at most
    # `max_rewarms` times: a run whose decay came too early for it gets another one instead of ending half-trained
    rewarm_when_held_out_above: float = 0.0
    rewarm_probe: str = "eval_number_loss"
    # > 0 (with decay_steps, eval_files): a decay that ends with the second-hop turn (eval_second_hop_loss over every
    # held-out conversation of that many turns, whatever eval_limit picks) above this many nats rewarms too, within
    # max_rewarms: the turn that asks a 2-hop question's second hop, which no loss over all targets sees
    rewarm_second_hop_above: float = 0.0
    max_rewarms: int = 1
    # a rewarm's lr climbs to this fraction of `lr` (1: the peak again) and decays from there
    rewarm_peak_ratio: float = 1.0
    # with decay_steps: also export the model as it is when the decay starts, to run_dir/pre_decay (a branch point
    # for other continuations, e.g. reinforcement learning from a model that has not been annealed)
    export_before_decay: bool = False
    # with decay_steps: also export the model k steps into the decay, for each k, to run_dir/decay_<k> (a model
    # half-way through its anneal: it copies some names and numbers right, so rewards have something to reinforce)
    export_during_decay: list[int] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        for key, allowed in {"overlong": ("truncate", "drop"), "bad_lines": ("fail", "skip"),
                             "think_layout": ("normalize", "reject"), "batch_unit": ("sequences", "tokens"),
                             "decay_probe": PROBES, "rewarm_probe": PROBES, "eval_pick": ("first", "spread")}.items():
            check_choice(self, key, allowed)
        check_positive(self, "cutoff_len", "pack_tokens", "global_batch", "epochs", "rewarm_peak_ratio")
        check_non_negative(self, "max_steps", "eval_every", "eval_limit", "decay_steps",
                           "decay_when_held_out_below", "rewarm_when_held_out_above", "rewarm_second_hop_above",
                           "max_rewarms")
        for key in ("rewarm_when_held_out_above", "rewarm_second_hop_above"):
            missing = [k for k, ok in (("decay_steps", self.decay_steps > 0), ("eval_files", bool(self.eval_files)),
                                       ("max_rewarms", self.max_rewarms > 0)) if not ok]
            if getattr(self, key) > 0 and missing:
                raise run_config.RunConfigError(
                    f"{key}={getattr(self, key)} needs {', '.join(missing)} "
                    "(the decay to repeat, the held-out probe that decides it, and at least one rewarm)", key=key)
        if self.decay_when_held_out_below > 0:
            missing = [k for k, ok in (("decay_steps", self.decay_steps > 0), ("eval_files", bool(self.eval_files)),
                                       ("eval_every", self.eval_every > 0), ("max_steps", self.max_steps > 0)) if not ok]
            if missing:
                raise run_config.RunConfigError(
                    f"decay_when_held_out_below={self.decay_when_held_out_below} needs {', '.join(missing)} "
                    "(the held-out probe that starts the decay, and the longest run)",
                    key="decay_when_held_out_below")
        bad = [k for k in self.export_during_decay
               if not isinstance(k, int) or isinstance(k, bool) or not 0 < k < max(self.decay_steps, 1)]
        if bad:
            raise run_config.RunConfigError(f"export_during_decay={self.export_during_decay}: {bad} are not steps "
                                            f"inside the decay (integers in 1..{self.decay_steps - 1})",
                                            key="export_during_decay")
        if self.decay_steps > 0 and self.budget_minutes > 0:
            raise run_config.RunConfigError("decay_steps counts steps; it does not combine with budget_minutes",
                                            key="decay_steps")
        if self.cutoff_len < 2:
            raise run_config.RunConfigError(f"cutoff_len={self.cutoff_len}: need at least 2 tokens", key="cutoff_len")
        if not 0 <= self.min_lr_ratio <= 1:
            raise run_config.RunConfigError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]", key="min_lr_ratio")
        if self.number_copy_weight <= 0:
            raise run_config.RunConfigError(f"number_copy_weight={self.number_copy_weight} must be > 0",
                                            key="number_copy_weight")
        if self.context_loss_weight < 0:
            raise run_config.RunConfigError(f"context_loss_weight={self.context_loss_weight} must be >= 0")
        check_non_negative(self, "recall_drills")
        if self.recall_drills and not self.context_loss_weight:
            raise run_config.RunConfigError(f"recall_drills={self.recall_drills} needs context_loss_weight > 0 (a "
                                            "drill has no supervised token; the context loss trains it)",
                                            key="recall_drills")
        if self.budget_minutes < 0:
            raise run_config.RunConfigError(f"budget_minutes={self.budget_minutes} must be >= 0 (0: no time budget)")
        if self.stop_after_steps < 0:
            raise run_config.RunConfigError(f"stop_after_steps={self.stop_after_steps} must be >= 0 (0: run the "
                                            "whole schedule)")


def lr_schedule(cfg: SFTConfig, total_steps: int):
    if cfg.budget_minutes > 0:
        return TimedWarmupCosine(cfg.budget_minutes * 60, cfg.warmup_ratio, cfg.min_lr_ratio)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if cfg.decay_steps > 0:
        return WarmupHoldDecay(total_steps, warmup, min(cfg.decay_steps, total_steps - warmup), cfg.min_lr_ratio,
                               cfg.rewarm_peak_ratio)
    return WarmupCosine(total_steps, warmup, cfg.min_lr_ratio)


# --- one step -----------------------------------------------------------------------------------------------------
def token_nll(model, batch: MicroBatch, device, autocast_dtype: torch.dtype | None,
              every_target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """-logprob of the scored targets of one packed micro-batch, and their supervision weights.

    Scored are the supervised targets (the head never runs on prompts and tool responses), or with
    `every_target` all of them. A micro-batch without supervised targets (a rank with nothing to do) still scores
    one position, so that its backward pass (and FSDP's gradient collectives) runs like every other rank's; its
    -logprob is multiplied by 0, so no loss term counts it.
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
    return (-logprobs if len(supervised) else logprobs * 0), batch.weights[scored]


def micro_step(model, batch: MicroBatch, scale: float, device, autocast_dtype: torch.dtype | None,
               context_weight: float = 0.0, context_skip: torch.Tensor | None = None,
               target_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Forward and backward of one packed micro-batch; returns its summed supervised -logprob (detached).

    With context_weight > 0 the objective also counts every other target (system prompt, question, tool
    responses) with that weight: a language-modelling loss on the context, which gives a model trained from
    scratch many more examples of copying names and values than its own turns hold. `context_skip` flags targets
    that the context loss leaves out; `target_scale` multiplies each target's term of the objective (the returned
    supervised sum is unscaled).
    """
    nll, weights = token_nll(model, batch, device, autocast_dtype, every_target=context_weight > 0)
    supervised = (nll * weights).sum()
    padding = not batch.weights.any()  # a padding micro-batch scores one position, as 0
    scaled = nll if target_scale is None or padding else nll * target_scale.to(nll.device)
    objective = (scaled * weights).sum()
    if context_weight > 0:
        context = 1 - weights
        if context_skip is not None and not padding:
            context = context * ~context_skip.to(context.device)
        objective = objective + context_weight * (scaled * context).sum()
    (objective * scale).backward()
    return supervised.detach()


def token_pairs(ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """One int64 per (token, next token) pair."""
    return (ids.astype(np.int64) << 32) + targets


def repeated_pairs(batch: MicroBatch) -> tuple[np.ndarray, np.ndarray]:
    """The (input token, target) pairs of a packed micro-batch, and which of them occur earlier in the same
    conversation."""
    pairs = token_pairs(batch.input_ids.numpy(), batch.targets.numpy())
    repeated = np.zeros(len(pairs), dtype=bool)
    start = 0
    for n in batch.seqlens:
        _, first, inverse = np.unique(pairs[start:start + n], return_index=True, return_inverse=True)
        repeated[start:start + n] = first[inverse] < np.arange(n)
        start += n
    return pairs, repeated


def copy_targets(batch: MicroBatch, known_pairs: np.ndarray) -> torch.Tensor:
    """Which targets only copying predicts: the pair (input token, target) occurs earlier in the same conversation
    and nowhere in the training data (a new name or number that the context spells out)."""
    pairs, repeated = repeated_pairs(batch)
    return torch.from_numpy(repeated & ~np.isin(pairs, known_pairs))


def number_targets(batch: MicroBatch, digits: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The digit targets (`digits`, a flag per token id) of a packed micro-batch in two sets: those that spell a
    number the conversation has not spelt before (their pair (input token, target) does not occur earlier in the
    conversation), and those that copy one (it does)."""
    _, repeated = repeated_pairs(batch)
    is_digit = digits[batch.targets.numpy()]
    return torch.from_numpy(is_digit & ~repeated), torch.from_numpy(is_digit & repeated)


def number_tokens(tokenizer: Tokenizer) -> np.ndarray:
    """A flag per token id: the token is digits (after an optional space)."""
    texts = (tokenizer.decode([i]).lstrip(" ") for i in range(tokenizer.vocab_size))
    return np.array([t.isascii() and t.isdigit() for t in texts])


def drill_tokens(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, int]:
    """What recall drills are made of: the ids of word tokens (letters after an optional space: the keys), of
    two-digit tokens (the values) and of the newline token (the separator)."""
    texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    keys = [i for i, t in enumerate(texts) if t.lstrip(" ").isascii() and t.lstrip(" ").isalpha()]
    values = [i for i, t in enumerate(texts) if len(t) == 2 and t.isascii() and t.isdigit()]
    newline = tokenizer.encode("\n")
    if len(values) != 100 or len(newline) != 1:
        raise run_config.RunConfigError(f"recall_drills needs a tokenizer with the 100 two-digit tokens (it has "
                                        f"{len(values)}) and a newline token (the demo's: litere.bpe.train_tokenizer "
                                        "with digit_pairs)", key="recall_drills")
    return np.array(keys), np.array(values), newline[0]


def assistant_turns(supervised: np.ndarray, seqlens) -> list[list[np.ndarray]]:
    """For each document of a packed micro-batch, its assistant turns: the runs of consecutive positions in
    `supervised` (sorted positions of the supervised targets), as indices into `supervised`."""
    bounds = np.cumsum([0, *seqlens])
    documents = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        inside = np.nonzero((supervised >= start) & (supervised < stop))[0]
        breaks = np.nonzero(np.diff(supervised[inside]) > 1)[0] + 1
        documents.append(np.split(inside, breaks) if len(inside) else [])
    return documents


@dataclass
class HeldOut:
    """The evaluation set as one planned step, the token pairs of the training data (for the copy split) and the
    flags of the digit tokens (for the number split). `second_hop`: (assistant turns of a conversation, the turn
    scored) for eval_second_hop_loss; by default the third of five, the turn of a 2-hop teacher conversation (search,
    visit, search, visit, answer) that asks the second hop's question. `all_second_hops`: every held-out conversation
    of that many turns, whatever eval_limit picks (the probe of rewarm_second_hop_above)."""
    planner: BatchPlanner
    known_pairs: np.ndarray
    numbers: np.ndarray
    second_hop: tuple[int, int] = SECOND_HOP
    all_second_hops: HeldOut | None = None


def held_out_loss(model, held_out: HeldOut, env: DistEnv, autocast_dtype: torch.dtype | None) -> dict:
    """Token-mean losses over the evaluation set (the planner's single step), without gradients: `eval_loss` over
    the supervised targets, split into `eval_copy_loss` (targets only copying predicts, see copy_targets) and
    `eval_other_loss`, with `eval_copy_share` (the copy targets' share of the supervised ones);
    `eval_number_loss` over the supervised targets that are digits; and `eval_second_hop_loss`, the nats of one
    turn (summed over its targets, see HeldOut.second_hop) averaged over the conversations of that many turns (None
    where a kind has no target or conversation)."""
    batch = held_out.planner.batch(DataPosition(), env.rank, env.world_size)
    turns, scored_turn = held_out.second_hop
    # copy nll, copy count, other nll, other count, number nll, number count, scored turns' nll, conversations
    sums = torch.zeros(8, dtype=torch.float64, device=env.device)
    with torch.no_grad():
        for micro in batch.micro_batches:
            supervised = micro.weights.nonzero().squeeze(1)
            if len(supervised):
                copy = copy_targets(micro, held_out.known_pairs)[supervised]
                number = torch.from_numpy(held_out.numbers[micro.targets[supervised].numpy()])
            else:  # token_nll scores one dummy target then
                copy = number = torch.zeros(1, dtype=torch.bool)
            nll, weights = token_nll(model, micro, env.device, autocast_dtype)
            nll, weights = nll.double() * weights, weights.double()
            copy, number = copy.to(env.device).double(), number.to(env.device).double()
            documents = [d for d in assistant_turns(supervised.numpy(), micro.seqlens) if len(d) == turns]
            scored = torch.from_numpy(np.concatenate([d[scored_turn] for d in documents])) if documents else None
            sums += torch.stack([(nll * copy).sum(), (weights * copy).sum(), (nll * (1 - copy)).sum(),
                                 (weights * (1 - copy)).sum(), (nll * number).sum(), (weights * number).sum(),
                                 nll[scored.to(env.device)].sum() if documents else nll.new_zeros(()),
                                 nll.new_tensor(float(len(documents)))])
    c_nll, c_n, o_nll, o_n, n_nll, n_n, t_nll, t_n = distributed.all_reduce_sum(sums, env).tolist()
    return {"eval_loss": (c_nll + o_nll) / max(1.0, c_n + o_n), "eval_copy_loss": c_nll / c_n if c_n else None,
            "eval_other_loss": o_nll / max(1.0, o_n), "eval_copy_share": c_n / max(1.0, c_n + o_n),
            "eval_number_loss": n_nll / n_n if n_n else None, "eval_second_hop_loss": t_nll / t_n if t_n else None}


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
    tokenizer, tokenizer_dir = load_tokenizer(cfg)
    mcfg = model_config(cfg, tokenizer)
    run_dir, log, resume_from = open_run(cfg, env)
    planner, held_out = _load_data(cfg, tokenizer, log)
    digits = None if cfg.context_loss_new_numbers and cfg.number_copy_weight == 1 else number_tokens(tokenizer)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else planner.total_steps(cfg.epochs)
    if total_steps <= 0:
        raise run_config.RunConfigError(f"no full global batch: {len(planner.dataset)} conversations, "
                                        f"global_batch={cfg.global_batch} {cfg.batch_unit}")

    precision, bf16_mode = resolve_precision(cfg, env)
    autocast_dtype = torch.bfloat16 if precision == "bf16" and bf16_mode == "autocast" else None
    model = build_model(cfg, mcfg, env, bf16_params=precision == "bf16" and bf16_mode == "fsdp")
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg, lr_schedule(cfg, total_steps))
    position, step = DataPosition(), 0
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer, scheduler, env, log=log.info)
        step, position = state["step"], DataPosition(**state["data_position"])
        log.rewind_metrics(step)
        if state["data_fingerprint"] != planner.dataset.fingerprint():
            log.info(f"warning: the training data differ from those of {resume_from}; the data position may not "
                     "mean the same documents")
        log.info(f"resumed from {resume_from} at step {step} (epoch {position.epoch}, step {position.step} of it)")
    peak = peak_flops(cfg, env)
    clock = scheduler.lr_lambdas[0] if cfg.budget_minutes > 0 else None
    if clock:  # a resumed schedule keeps its elapsed time but takes this config's budget
        clock.budget_s, clock.warmup_ratio, clock.min_ratio = cfg.budget_minutes * 60, cfg.warmup_ratio, cfg.min_lr_ratio
    schedule = scheduler.lr_lambdas[0]
    if isinstance(schedule, WarmupHoldDecay):  # a resumed schedule keeps its decisions but takes this config's height
        schedule.rewarm_peak = cfg.rewarm_peak_ratio

    def stop_step() -> int:
        end = schedule.end_step if isinstance(schedule, WarmupHoldDecay) else total_steps
        return min(end, cfg.stop_after_steps) if cfg.stop_after_steps > 0 else end
    length = (f"{cfg.budget_minutes:g} minutes (at most {total_steps} steps)" if clock else f"{total_steps} steps")
    length += f" of {cfg.global_batch} {cfg.batch_unit}"
    if cfg.decay_when_held_out_below > 0:
        length += (f" at most, the lr decaying over {cfg.decay_steps} steps once the held-out {cfg.decay_probe} is "
                   f"below {cfg.decay_when_held_out_below:g}")
    if cfg.stop_after_steps > 0:
        length += f", stopping after step {stop_step()}"
    log.info(f"model: {mcfg.num_parameters() / 1e6:.1f}M parameters, {env.world_size} process(es) on "
             f"{env.device.type}, precision {precision}" + (f" ({bf16_mode})" if precision == "bf16" else "")
             + f", activation checkpointing {'on' if cfg.activation_checkpointing else 'off'}"
             + (", blocks compiled" if blocks_compiled(cfg, env) else "") + f"; {length}, "
               f"{planner.steps_in_epoch(0)} steps per epoch")
    started, start_step = time.perf_counter(), step
    nonfinite = NonFiniteGuard(cfg.max_nonfinite_steps, run_dir, log)
    budget_before = clock.elapsed_s if clock else 0.0  # time spent before a resume
    out_of_time = False
    while step < stop_step() and not out_of_time:
        t0 = time.perf_counter()
        batch = planner.batch(position, env.rank, env.world_size)
        scale = env.world_size / batch.supervised_tokens
        nll = torch.zeros((), dtype=torch.float64, device=env.device)
        for i, micro in enumerate(batch.micro_batches):
            distributed.set_gradient_sync(model, i == len(batch.micro_batches) - 1)
            new, copies = (None, None) if digits is None else number_targets(micro, digits)
            skip = None if cfg.context_loss_new_numbers else new
            boost = None if cfg.number_copy_weight == 1 else 1 + (cfg.number_copy_weight - 1) * copies.float()
            nll += micro_step(model, micro, scale, env.device, autocast_dtype, cfg.context_loss_weight,
                              skip, boost).double()
        loss = float(distributed.all_reduce_sum(nll, env)) / batch.supervised_tokens
        lr = optimizer.param_groups[0]["lr"]
        if clock:
            clock.elapsed_s = budget_before + agreed_seconds(time.perf_counter() - started, env)
            out_of_time = clock.elapsed_s >= clock.budget_s
        grad_norm, stepped = optimizer_step(model, optimizer, scheduler, cfg.grad_clip, loss)
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        seconds = time.perf_counter() - t0
        step += 1
        position = planner.advance(position)
        record = {"step": step, "epoch": round(_epoch_progress(planner, position), 4), "loss": loss, "lr": lr,
                  "grad_norm": grad_norm, "sequences": batch.sequences, "tokens": batch.tokens,
                  "supervised_tokens": batch.supervised_tokens, "micro_batches": len(batch.micro_batches),
                  "step_s": round(seconds, 4), "tokens_per_s": batch.tokens / seconds,
                  "skipped_updates": 0 if stepped else 1}
        if peak:
            record["mfu"] = step_flops(mcfg, batch.doc_lengths) / seconds / (peak * env.world_size)
        if clock:
            record["train_s"] = round(clock.elapsed_s, 2)
        if held_out and (step >= stop_step() or out_of_time or (cfg.eval_every > 0 and step % cfg.eval_every == 0)):
            record.update(held_out_loss(model, held_out, env, autocast_dtype))
            copy, number, hop = record["eval_copy_loss"], record["eval_number_loss"], record["eval_second_hop_loss"]
            log.info(f"step {step}: held-out loss {record['eval_loss']:.4f} (copy targets "
                     + (f"{copy:.4f}, {record['eval_copy_share']:.1%} of them" if copy is not None else "none")
                     + (f"; digits {number:.4f}" if number is not None else "; no digits")
                     + (f"; second-hop turn {hop:.3f} nats)" if hop is not None else ")"))
            probe = record[cfg.decay_probe]
            if probe is not None and probe < cfg.decay_when_held_out_below and schedule.decay_triggered_at is None:
                schedule.start_decay(step)
                if schedule.decay_triggered_at is not None:
                    log.info(f"step {step}: the held-out {cfg.decay_probe} is below {cfg.decay_when_held_out_below:g}; "
                             f"the lr decays from here, the run ends at step {stop_step()}")
            rewarm_left = _rewarm_left(cfg, schedule, step)
            if rewarm_left and held_out.all_second_hops is not None:
                all_hops = held_out_loss(model, held_out.all_second_hops, env, autocast_dtype)["eval_second_hop_loss"]
                record["decay_end_second_hop_loss"] = all_hops
                log.info(f"step {step}: second-hop turn over all held-out 2-hop conversations {all_hops:.3f} nats")
            reasons = _rewarm_reasons(cfg, record) if rewarm_left else []
            if reasons:
                schedule.rewarm(step)
                for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
                    group["lr"] = base_lr * schedule(step)  # the next step is the ramp's first, not the decay's last
                log.info(f"step {step}: the decay has ended with {' and '.join(reasons)}; the lr goes back "
                         f"up to {_rewarm_height(cfg)} and decays again (rewarm {len(schedule.rewarm_starts)} of "
                         f"{cfg.max_rewarms}), the run ends at step {stop_step()}")
        if isinstance(schedule, WarmupHoldDecay):
            record["decay_start"] = schedule.decay_start
            first_decay = not schedule.rewarm_starts  # the exports are of the first decay
            if cfg.export_before_decay and step == schedule.decay_start and first_decay:
                export(cfg, model, mcfg, run_dir, tokenizer, tokenizer_dir, env, log, name="pre_decay")
            if step - schedule.decay_start in cfg.export_during_decay and first_decay:
                export(cfg, model, mcfg, run_dir, tokenizer, tokenizer_dir, env, log,
                       name=f"decay_{step - schedule.decay_start}")
        last = step >= stop_step() or out_of_time
        log.metrics(record)
        if step % cfg.log_every == 0 or last or not stepped:
            _progress_line(log, record, stop_step(), time.perf_counter() - started, step - start_step, clock)
        nonfinite.record(stepped, step)
        stopped_early = last and cfg.stop_after_steps > 0 and step == cfg.stop_after_steps and not out_of_time  # always checkpointed: a later run continues
        if stopped_early or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and not last):
            path = checkpoint.save(run_dir, step, model, optimizer, scheduler,
                                   {"data_position": vars(position), "data_fingerprint": planner.dataset.fingerprint()},
                                   env, keep=cfg.keep_checkpoints)
            log.info(f"checkpoint {path}")
    if cfg.export:
        export(cfg, model, mcfg, run_dir, tokenizer, tokenizer_dir, env, log)
    return run_dir



def _rewarm_height(cfg: SFTConfig) -> str:
    return "the peak" if cfg.rewarm_peak_ratio == 1 else f"{cfg.rewarm_peak_ratio:g} × the peak"


def _rewarm_left(cfg: SFTConfig, schedule, step: int) -> bool:
    """A decay ends at this step, a rewarm rule is on and a rewarm is left."""
    return ((cfg.rewarm_when_held_out_above > 0 or cfg.rewarm_second_hop_above > 0)
            and isinstance(schedule, WarmupHoldDecay) and step == schedule.end_step
            and len(schedule.rewarm_starts) < cfg.max_rewarms)


def _rewarm_reasons(cfg: SFTConfig, record: dict) -> list[str]:
    """The rewarm rules that the held-out record of a decay's last step breaks, in words (none: no rewarm)."""
    rules = [(f"held-out {cfg.rewarm_probe}", record[cfg.rewarm_probe], cfg.rewarm_when_held_out_above),
             ("second-hop turn", record.get("decay_end_second_hop_loss"), cfg.rewarm_second_hop_above)]
    return [f"the {name} at {value:.4f}, above {limit:g}" for name, value, limit in rules
            if limit > 0 and value is not None and value > limit]


def _load_data(cfg: SFTConfig, tokenizer: Tokenizer, log: RunLog) -> tuple[BatchPlanner, HeldOut | None]:
    """The training plan and, with eval_files, a plan that covers the evaluation set in one step."""
    settings = dict(cutoff_len=cfg.cutoff_len, overlong=cfg.overlong, bad_lines=cfg.bad_lines,
                    think_layout=cfg.think_layout, log=log.info)
    dataset, stats = load_sft_dataset(cfg.train_files, tokenizer, **settings)
    log.info(f"data: {stats.summary()}")
    known = np.unique(token_pairs(dataset.tokens[:-1], dataset.tokens[1:]))  # of the conversations, not the drills
    if cfg.recall_drills:
        keys, values, separator = drill_tokens(tokenizer)
        drills = recall_drills(cfg.recall_drills, keys, values, separator, seed=cfg.seed)
        dataset = dataset.concat(drills)
        log.info(f"recall drills: {len(drills)} documents of {drills.lengths[0]} tokens "
                 f"({len(drills.tokens) / len(dataset.tokens):.1%} of the training tokens)")
    planner = BatchPlanner(dataset, global_batch=cfg.global_batch, unit=cfg.batch_unit, pack_tokens=cfg.pack_tokens,
                           seed=cfg.seed)
    if not cfg.eval_files:
        return planner, None
    full_set, eval_stats = load_sft_dataset(cfg.eval_files, tokenizer, **settings)
    eval_set = full_set
    if cfg.eval_limit and cfg.eval_limit < len(eval_set):
        eval_set = eval_set.subset(eval_indices(len(eval_set), cfg.eval_limit, cfg.eval_pick))
    used = {"first": "the first", "spread": "evenly spaced,"}[cfg.eval_pick]
    log.info(f"eval data: {eval_stats.summary()}" + (f"; {used} {len(eval_set)} are used" if cfg.eval_limit else ""))
    numbers = number_tokens(tokenizer)
    held_out = HeldOut(BatchPlanner(eval_set, global_batch=len(eval_set), unit="sequences", pack_tokens=cfg.pack_tokens,
                                    seed=cfg.seed), known, numbers, SECOND_HOP)
    turns = SECOND_HOP[0]
    _check_second_hop_probe(cfg, eval_set, turns)
    if cfg.rewarm_second_hop_above > 0:
        hops = [i for i in range(len(full_set)) if _assistant_turn_count(full_set, i) == turns]
        if not hops:
            raise run_config.RunConfigError(
                f"rewarm_second_hop_above={cfg.rewarm_second_hop_above}: none of the {len(full_set)} held-out "
                f"conversations (eval_files) has {turns} assistant turns, so the probe has nothing to score",
                key="rewarm_second_hop_above")
        hop_set = full_set.subset(np.array(hops))
        held_out.all_second_hops = HeldOut(BatchPlanner(hop_set, global_batch=len(hop_set), unit="sequences",
                                                        pack_tokens=cfg.pack_tokens, seed=cfg.seed),
                                           known, numbers, SECOND_HOP)
        log.info(f"second-hop probe where a decay ends: the {len(hop_set)} held-out conversations of {turns} turns")
    return planner, held_out


def _assistant_turn_count(dataset, index: int) -> int:
    targets = dataset.document(index)[1][1:]
    return len(assistant_turns(np.nonzero(targets)[0], [len(targets)])[0])


def _check_second_hop_probe(cfg: SFTConfig, eval_set, turns: int):
    """A schedule that acts on eval_second_hop_loss needs held-out conversations of that many assistant turns: without
    them the probe is None and its rule would never fire."""
    acting = [key for key, probe, on in (("decay_probe", cfg.decay_probe, cfg.decay_when_held_out_below > 0),
                                         ("rewarm_probe", cfg.rewarm_probe, cfg.rewarm_when_held_out_above > 0))
              if on and probe == "eval_second_hop_loss"]
    if not acting or any(_assistant_turn_count(eval_set, i) == turns for i in range(len(eval_set))):
        return
    raise run_config.RunConfigError(
        f"{acting[0]}=eval_second_hop_loss: none of the {len(eval_set)} held-out conversations used (eval_files, "
        f"eval_limit={cfg.eval_limit}, eval_pick={cfg.eval_pick!r}) has {turns} assistant turns, so the probe has "
        "nothing to score", key=acting[0])


def eval_indices(size: int, limit: int, pick: str) -> np.ndarray:
    """Which `limit` of `size` evaluation conversations are used (SFTConfig.eval_pick)."""
    return np.arange(limit) if pick == "first" else np.arange(limit) * size // limit


def _progress_line(log: RunLog, record: dict, last_step: int, elapsed: float, steps_done: int,
                   clock: TimedWarmupCosine | None):
    """One log line; the eta counts to `last_step` (the end of the schedule, or stop_after_steps)."""
    mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
    if clock:
        where = f"step {record['step']}"
        timing = f"{duration(clock.elapsed_s)} of {duration(clock.budget_s)}"
    else:
        where = f"step {record['step']}/{last_step}"
        eta = elapsed / steps_done * (last_step - record["step"])
        timing = f"{duration(elapsed)} elapsed, eta {duration(eta)}"
    skipped = " | skipped: non-finite loss or gradient" if record.get("skipped_updates") else ""
    log.info(f"{where} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | grad norm {record['grad_norm']:.3f} | "
             f"{record['tokens_per_s']:,.0f} tok/s{mfu} | {timing}{skipped}")


def _epoch_progress(planner: BatchPlanner, position: DataPosition) -> float:
    return position.epoch + position.step / max(1, planner.steps_in_epoch(position.epoch))


