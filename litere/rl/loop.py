"""The RL stages (`train.py --stage rl1 | rl2`): GRPO with truncated importance sampling, or PPO with a critic.

One step:
1. questions   the next `prompts_per_step` questions of a seeded, resumable order; each rank takes its share
2. rollout     `samples_per_prompt` trajectories per question through the agent over the sampler, which reads the
               current policy weights (sync.py); every trajectory records the policy version (this step)
3. reward      the judge scores each trajectory's answer
4. advantages  GRPO: per group (r - mean) / (std + 1e-6) (or r - mean); PPO: GAE over the critic's values
5. old pass    one no-grad trainer forward gives the sampled tokens' logprobs at the sampling temperature:
               the ratio's denominator and, against the sampler's own logprobs, the TIS weights. Skipped when the
               step makes one optimizer step and scores nothing else (ppo_epochs = mini_batches = 1, no KL
               reference, no critic): the update's forward runs the same weights, so its detached logprobs are
               π_old, and the TIS weights are computed there
6. update      ppo_epochs x mini_batches optimizer steps of the clipped surrogate (loss.py), each normalised over
               its global mini-batch (all ranks, all micro-batches)
7. log, dump the step's trajectories, checkpoint
The run directory holds config.toml, metrics.jsonl, train.log, rollouts/step_N.jsonl.gz, checkpoints (with a
Hugging Face export of each) and final/ at the end; a crashed run resumes from its newest checkpoint.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import random
import resource
import time
from pathlib import Path

import torch

from .. import run_config
from ..agent import Agent, check_trainable
from ..questions import Environments, Question
from ..reward import score_trajectories
from ..sampler import SamplingParams
from ..train import checkpoint, distributed
from ..train.core import (NonFiniteGuard, WarmupCosine, blocks_compiled, build_model, build_optimizer, duration,
                          export, full_model_state, load_tokenizer, model_config, open_run, optimizer_step,
                          resolve_precision)
from ..train.distributed import DistEnv
from . import batch as batching
from .advantage import gae, group_advantages, zero_variance
from .config import RLConfig
from .critic import build_critic
from .loss import Normalizer, aggregate, kl_penalty, policy_loss, tis_weights, value_loss
from .metrics import (add_into, all_reduce_max, all_reduce_sum, gather_objects, loss_metrics, reduce_sums,
                      rollout_metrics, trajectory_summary)
from .prompts import PromptPosition, load_question_files, prompt_order
from .rollouts import agent_config, check_prompts, make_judge, make_sampler, sampling_params, system_prompt
from .sync import RolloutWeights, rollout_dtype


def train(cfg: RLConfig) -> Path:
    """Run (or resume) an RL stage as configured; returns the run directory."""
    env = distributed.init(cfg.device)
    try:
        return RLRun(cfg, env).run()
    finally:
        distributed.shutdown(env)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a step (the agent derives each question's and sample's seeds from it)."""
    return random.Random(f"litere-rl:{seed}:{step}").getrandbits(63)


class RLRun:
    def __init__(self, cfg: RLConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.tokenizer, self.tokenizer_dir = load_tokenizer(cfg)
        self.mcfg = model_config(cfg, self.tokenizer)
        self.questions = load_question_files(cfg.questions)
        self.question_index = {q.id: i for i, q in enumerate(self.questions)}
        try:
            self.order = prompt_order(self.questions, cfg.prompts_per_step, cfg.seed, cfg.balance_sources)
        except ValueError as e:
            raise run_config.RunConfigError(str(e)) from None
        self.total_steps = cfg.max_steps or self.order.total_steps(cfg.epochs)
        if self.total_steps <= 0:
            raise run_config.RunConfigError(f"epochs={cfg.epochs} of {self.order.steps_per_epoch} steps is no step; "
                                            "set max_steps or more epochs")
        self.system_prompt = system_prompt(cfg)
        self.run_dir, self.log, resume_from = open_run(cfg, env)

        precision, bf16_mode = resolve_precision(cfg, env)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" and bf16_mode == "autocast" else None
        bf16_params = precision == "bf16" and bf16_mode == "fsdp"
        start = full_model_state(cfg, self.mcfg) if env.is_main else None
        self.policy = build_model(cfg, self.mcfg, env, bf16_params, state=start)
        self.policy.train()
        updates = self.total_steps * cfg.ppo_epochs * cfg.mini_batches
        schedule = WarmupCosine(updates, math.ceil(cfg.warmup_ratio * updates), 1.0)  # warmup, then constant
        self.optimizer, self.scheduler = build_optimizer(self.policy, cfg, schedule)
        self.reference = None
        if cfg.kl_coef > 0:
            self.reference = build_model(cfg, self.mcfg, env, bf16_params, state=start).eval().requires_grad_(False)
        self.critic = self.critic_optimizer = None
        if cfg.algo == "ppo":
            body = (critic_body_state(cfg.critic) if cfg.critic else start) if env.is_main else None
            self.critic = build_critic(body, self.mcfg, env, bf16_params, cfg.activation_checkpointing)
            self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                                      betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                                      weight_decay=cfg.weight_decay)
        del start
        self.rollout_weights = RolloutWeights(self.policy, env, rollout_dtype(cfg.rollout_dtype, env.device))
        self.judge = make_judge(cfg)
        # skipped (non-finite) updates in a row, policy and critic
        self.nonfinite = NonFiniteGuard(cfg.max_nonfinite_steps, self.run_dir, self.log, "policy updates")
        self.nonfinite_critic = NonFiniteGuard(cfg.max_nonfinite_steps, self.run_dir, self.log, "critic updates")
        self.envs = Environments(cfg.env or None, **cfg.env_settings)
        self.step, self.position = 0, PromptPosition()
        if resume_from is not None:
            state = checkpoint.load(resume_from, self.policy, self.optimizer, self.scheduler, env,
                                    extra=self._extra_state())
            self.step, self.position = state["step"], PromptPosition(**state["prompt_position"])
            self.log.rewind_metrics(self.step)
            self.log.info(f"resumed from {resume_from} at step {self.step}")
        self.log.info(f"model: {self.mcfg.num_parameters() / 1e6:.1f}M parameters, {env.world_size} process(es) on "
                      f"{env.device.type}, precision {precision}"
                      + (", blocks compiled" if blocks_compiled(cfg, env) else "")
                      + f"; {cfg.algo.upper()}, {self.total_steps} steps of {cfg.prompts_per_step} questions x "
                      f"{cfg.samples_per_prompt} samples from {len(self.questions)} questions; rollout weights "
                      f"{'shared with the trainer' if self.rollout_weights.shared else 'copied each step'}")

    def _extra_state(self) -> dict | None:
        return {"critic": (self.critic, self.critic_optimizer)} if self.critic is not None else None

    # --- the run ---------------------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        stop = min(self.total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else self.total_steps
        started, first = time.perf_counter(), self.step
        writer = _tensorboard(self.run_dir) if self.env.is_main else None
        if self.step == 0 and cfg.probe_questions and cfg.probe_every:  # the start model, as record step 0
            record = {"step": 0, **self._timed_probe()}
            self.log.metrics(record)
            self.log.info("start | " + " | ".join(f"probe {k} {v:.0%}" for k, v in record["probe"].items()))
        while self.step < stop:
            record = self.train_step()
            self.step += 1
            self.position = self.order.advance(self.position)
            record["step"] = self.step
            if cfg.probe_questions and cfg.probe_every and (self.step % cfg.probe_every == 0 or self.step == stop):
                record.update(self._timed_probe())
            self.log.metrics(record)
            if writer:
                _write_scalars(writer, record, self.step)
            if self.step % cfg.log_every == 0 or self.step == stop:
                elapsed = time.perf_counter() - started
                self.log.info(_progress_line(record, stop, elapsed, self.step - first))
            last = self.step == stop
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or (last and stop < self.total_steps):
                self.save()
        if cfg.export:
            export(cfg, self.policy, self.mcfg, self.run_dir, self.tokenizer, self.tokenizer_dir, self.env, self.log)
        if writer:
            writer.close()
        return self.run_dir

    def save(self):
        state = {"prompt_position": vars(self.position), "questions": len(self.questions)}
        path = checkpoint.save(self.run_dir, self.step, self.policy, self.optimizer, self.scheduler, state, self.env,
                               keep=self.cfg.keep_checkpoints, extra=self._extra_state())
        if self.cfg.export:
            export(self.cfg, self.policy, self.mcfg, path, self.tokenizer, self.tokenizer_dir, self.env, self.log,
                   name="hf")
        self.log.info(f"checkpoint {path}")

    # --- one step --------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, env = self.cfg, self.env
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str):
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = seconds.get(name, 0.0) + now - clock
            clock = now

        mine = self.order.indices(self.position)[env.rank::env.world_size]
        questions = [self.questions[i] for i in mine]
        seconds["weight_sync"] = self.rollout_weights.refresh(self.policy)
        clock = time.perf_counter()
        trajectories = self.rollout(questions)
        lap("rollout")
        score_trajectories(trajectories, self.judge)
        lap("reward")

        group_of = [mine.index(self.question_index[t.question_id]) for t in trajectories]
        rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32)
        groups = torch.tensor(group_of, dtype=torch.long)
        advantages = group_advantages(rewards, groups, estimator=cfg.advantage) if len(rewards) else rewards
        keep = ~zero_variance(rewards, groups) if cfg.drop_zero_variance and len(rewards) else \
            torch.ones(len(rewards), dtype=torch.bool)
        mine_summaries = [trajectory_summary(t, mine[g]) for t, g in zip(trajectories, group_of)]
        summaries = [s for part in gather_objects(mine_summaries, env) for s in part]
        if all(s["termination"] == "error" for s in summaries):  # nothing to learn from: a setup fault
            example = next((t.error for t in trajectories if t.error), "see the rollout dump")
            raise RuntimeError(f"step {self.step + 1}: every trajectory ended in an error, e.g. {example}")
        record = {"epoch": self.position.epoch, **rollout_metrics(summaries)}
        if cfg.dump_rollouts:
            self._dump(trajectories, advantages)

        samples, sample_groups = [], []
        for t, a, g, k in zip(trajectories, advantages.tolist(), group_of, keep.tolist()):
            sample = batching.to_sample(t)
            if k and sample.num_loss_tokens:
                sample.values["advantages"] = torch.full((sample.num_loss_tokens,), a)
                samples.append(sample)
                sample_groups.append(g)
        plan = self._plan(samples, sample_groups)
        tis_sums: dict[str, torch.Tensor] = {}
        if not self.old_from_update:
            self._old_pass(samples, plan, tis_sums)
            lap("old_logprobs")
        if self.critic is not None:
            self._gae(samples)
        update = self._update(samples, plan, tis_sums)
        lap("update")
        tis = reduce_sums(tis_sums, env)

        lengths = all_reduce_sum([sum(s.num_tokens for s in samples), sum(s.num_loss_tokens for s in samples),
                                  sum(t.sampled_tokens for t in trajectories)], env)
        record.update(loss_metrics(update, tis))
        record.update({"trained_sequences": int(all_reduce_sum([len(samples)], env)[0]),
                       "trained_tokens": int(lengths[1]), "grad_norm": update.get("grad_norm"),
                       "lr": self.scheduler.get_last_lr()[0], "seconds": {k: round(v, 3) for k, v in seconds.items()},
                       "skipped_updates": update["skipped_updates"],
                       "step_s": round(sum(seconds.values()), 3)})
        record["tokens_per_s"] = {"rollout": lengths[2] / max(seconds["rollout"], 1e-9),
                                  "update": lengths[0] * cfg.ppo_epochs / max(seconds["update"], 1e-9)}
        if "old_logprobs" in seconds:
            record["tokens_per_s"]["old_logprobs"] = lengths[0] / max(seconds["old_logprobs"], 1e-9)
        record["generation_share"] = seconds["rollout"] / max(record["step_s"], 1e-9)
        if env.device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(env.device) / 2**30
            torch.cuda.reset_peak_memory_stats(env.device)
        else:  # the process's largest resident set so far (kilobytes on Linux)
            record["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return record

    def rollout(self, questions: list[Question]) -> list:
        cfg = self.cfg
        check_prompts(questions, self.tokenizer, cfg, self.system_prompt)
        sampler = make_sampler(self.rollout_weights.model, cfg, self.tokenizer)
        params = sampling_params(cfg, self.tokenizer, step_seed(cfg.seed, self.step))
        agent = Agent(sampler, self.tokenizer, self.envs, params, agent_config(cfg))
        trajectories = agent.run(questions, n=cfg.samples_per_prompt, policy_version=self.step)
        check_trainable(trajectories, cfg.temperature)
        return trajectories  # the sampler and its KV cache go with it

    # --- batches -------------------------------------------------------------------------------------------------
    def _plan(self, samples: list, groups: list[int]) -> list[tuple[list[list[int]], Normalizer]]:
        """Per mini-batch: this rank's micro-batches (lists of sample indices; padded with empty ones to the
        largest count of any rank) and the global normaliser."""
        cfg, env = self.cfg, self.env
        plan = []
        for members in batching.split_groups(groups, cfg.mini_batches):
            micros = batching.pack(samples, members, cfg.pack_tokens)
            micros += [[]] * (all_reduce_max(len(micros), env) - len(micros))
            tokens, sequences = all_reduce_sum([sum(samples[i].num_loss_tokens for i in members), len(members)], env)
            plan.append((micros, Normalizer(tokens=tokens, sequences=sequences, max_tokens=cfg.max_response_tokens)))
        return plan

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.autocast_dtype)

    def _logprobs(self, model, mb: batching.MicroBatch, entropy: bool = False):
        with self._autocast():
            return batching.sampled_logprobs(model, mb, self.cfg.temperature, entropy)

    def _values(self, mb: batching.MicroBatch) -> torch.Tensor:
        with self._autocast():
            hidden = self.critic(mb.input_ids, mb.positions, seqlens=mb.seqlens)
            return self.critic.values(hidden[mb.loss_positions])

    @property
    def old_from_update(self) -> bool:
        """Whether the update's forward gives π_old (see step 5 of the module's docstring)."""
        cfg = self.cfg
        return cfg.ppo_epochs == 1 and cfg.mini_batches == 1 and self.reference is None and self.critic is None

    def _score_old(self, samples: list, mb: batching.MicroBatch, old: torch.Tensor, tis_sums: dict):
        """Record π_old of a micro-batch's sampled tokens and their TIS weights against the sampler's logprobs."""
        mb.scatter(samples, "old", old)
        weights, metrics = tis_weights(old, mb.gather(samples, "rollout"), mb.seq_index, cap=self.cfg.tis_cap,
                                       veto=self.cfg.tis_veto)
        mb.scatter(samples, "tis", weights)
        add_into(tis_sums, metrics)

    def _old_pass(self, samples: list, plan, tis_sums: dict):
        """π_old (and π_ref, critic values) of every sampled token without gradients; TIS weights."""
        with torch.no_grad():
            for micros, _ in plan:
                for members in micros:
                    mb = batching.micro_batch(samples, members, self.env.device)
                    old = self._logprobs(self.policy, mb)
                    ref = self._logprobs(self.reference, mb) if self.reference is not None else None
                    values = self._values(mb) if self.critic is not None else None
                    if mb.is_padding:
                        continue
                    self._score_old(samples, mb, old, tis_sums)
                    if ref is not None:
                        mb.scatter(samples, "ref", ref)
                    if values is not None:
                        mb.scatter(samples, "old_values", values)

    def _gae(self, samples: list):
        """PPO: per-token advantages and returns; the reward sits on the last sampled token; advantages are then
        whitened over the global batch."""
        cfg = self.cfg
        for s in samples:
            values = s.values["old_values"]
            rewards = torch.zeros_like(values)
            rewards[-1] = s.reward
            s.values["advantages"], s.values["returns"] = gae(values, rewards, torch.ones_like(values), cfg.gamma,
                                                              cfg.lam)
        flat = torch.cat([s.values["advantages"] for s in samples]) if samples else torch.zeros(0)
        count, total, squares = all_reduce_sum([flat.numel(), float(flat.sum()), float(flat.square().sum())],
                                               self.env)
        mean = total / max(count, 1.0)
        std = math.sqrt(max(squares / max(count, 1.0) - mean ** 2, 0.0))
        for s in samples:
            s.values["advantages"] = (s.values["advantages"] - mean) / (std + 1e-6)

    def _update(self, samples: list, plan, tis_sums: dict) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        sums: dict[str, torch.Tensor] = {}
        norms = []
        skipped = 0
        train_policy = self.critic is None or self.step >= cfg.critic_warmup_steps
        for _ in range(cfg.ppo_epochs):
            for micros, norm in plan:
                if train_policy:
                    for k, members in enumerate(micros):
                        distributed.set_gradient_sync(self.policy, k == len(micros) - 1)
                        mb = batching.micro_batch(samples, members, env.device)
                        loss = self._policy_loss(samples, mb, norm, sums, tis_sums)
                        (loss * env.world_size).backward()
                    grad_norm, stepped = optimizer_step(self.policy, self.optimizer, self.scheduler, cfg.grad_clip)
                    norms += [grad_norm] if stepped else []
                    skipped += not stepped
                    self.nonfinite.record(stepped, self.step + 1)
                if self.critic is not None:
                    for k, members in enumerate(micros):
                        distributed.set_gradient_sync(self.critic, k == len(micros) - 1)
                        mb = batching.micro_batch(samples, members, env.device)
                        (self._critic_loss(samples, mb, norm, sums) * env.world_size).backward()
                    _, stepped = optimizer_step(self.critic, self.critic_optimizer, None, cfg.grad_clip)
                    skipped += not stepped
                    self.nonfinite_critic.record(stepped, self.step + 1)
        out = reduce_sums(sums, env)
        updates = cfg.ppo_epochs * len(plan)
        out["policy_updates"] = updates if train_policy else 0
        out["vf_minibatches"] = updates if self.critic is not None else 0
        if norms:
            out["grad_norm"] = sum(norms) / len(norms)
        out["skipped_updates"] = skipped  # the same on every rank: the norms are global
        return out

    def _policy_loss(self, samples, mb: batching.MicroBatch, norm: Normalizer, sums: dict, tis_sums: dict
                     ) -> torch.Tensor:
        cfg = self.cfg
        logprobs, entropy = self._logprobs(self.policy, mb, entropy=True)
        if mb.is_padding:  # joins the collectives; contributes nothing
            return logprobs.sum() * 0.0
        if self.old_from_update:
            self._score_old(samples, mb, logprobs.detach(), tis_sums)
        loss, metrics = policy_loss(logprobs, mb.gather(samples, "old"), mb.gather(samples, "advantages"),
                                    mb.seq_index, mode=cfg.loss_agg, norm=norm, clip_low=cfg.clip_low,
                                    clip_high=cfg.clip_high, dual_clip=cfg.dual_clip or None,
                                    weights=mb.gather(samples, "tis"))
        if self.reference is not None:
            kl = kl_penalty(logprobs, mb.gather(samples, "ref"), cfg.kl_kind)
            loss = loss + cfg.kl_coef * aggregate(kl, mb.seq_index, cfg.loss_agg, norm)
            metrics["kl_sum"] = kl.detach().double().sum()
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * aggregate(entropy, mb.seq_index, cfg.loss_agg, norm)
        metrics["entropy_sum"] = entropy.detach().double().sum()
        add_into(sums, metrics)
        return loss

    def _critic_loss(self, samples, mb: batching.MicroBatch, norm: Normalizer, sums: dict) -> torch.Tensor:
        values = self._values(mb)
        if mb.is_padding:
            return values.sum() * 0.0
        loss, metrics = value_loss(values, mb.gather(samples, "old_values"), mb.gather(samples, "returns"),
                                   mb.seq_index, mode=self.cfg.loss_agg, norm=norm, clip=self.cfg.value_clip or None)
        add_into(sums, {"vf_tokens": metrics["tokens"], "vf_loss_sum": metrics["vf_loss"],
                        "vf_clip_tokens": metrics["vf_clip_tokens"]})
        return loss

    # --- outputs -------------------------------------------------------------------------------------------------
    def _dump(self, trajectories: list, advantages: torch.Tensor):
        """Every rank's trajectories of this step, with rewards and advantages, in rollouts/step_N.jsonl.gz."""
        records = []
        for t, a in zip(trajectories, advantages.tolist()):
            record = t.to_dict()
            record["advantage"] = a
            records.append(record)
        gathered = gather_objects(records, self.env)
        if not self.env.is_main:
            return
        out = self.run_dir / "rollouts" / f"step_{self.step + 1}.jsonl.gz"
        out.parent.mkdir(exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            for part in gathered:
                for record in part:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, out)

    def _timed_probe(self) -> dict:
        """The probe's accuracies and its seconds, outside the step's own time split."""
        start = time.perf_counter()
        accuracy = self.probe()
        return {"probe": accuracy, "probe_s": round(time.perf_counter() - start, 3)}

    def probe(self) -> dict:
        """Greedy accuracy per data_source on the probe questions (each rank takes its share)."""
        from ..evaluation import evaluate
        from ..questions import load_questions

        cfg, env = self.cfg, self.env
        if not hasattr(self, "_probe_questions"):  # an even spread over the files' questions
            every = [q for path in cfg.probe_questions for q in load_questions(path)]
            self._probe_questions = every[::max(1, len(every) // cfg.probe_limit)][:cfg.probe_limit]
        self.rollout_weights.refresh(self.policy)
        mine = self._probe_questions[env.rank::env.world_size]
        sampler = make_sampler(self.rollout_weights.model, cfg, self.tokenizer)
        greedy = SamplingParams(temperature=0.0, stop_token_ids=self.tokenizer.stop_token_ids)
        config = agent_config(cfg, "eval", cfg.probe_max_response_tokens)
        report = evaluate(self.rollout_weights.model, self.tokenizer, mine, self.envs, 1, params=greedy,
                          config=config, sampler=sampler) if mine else {"by_data_source": {}}
        counts: dict[str, list[float]] = {}
        for part in gather_objects({src: (acc["avg@k"] * acc["trajectories"], acc["trajectories"])
                                    for src, acc in report["by_data_source"].items()}, env):
            for src, (correct, n) in part.items():
                c = counts.setdefault(src, [0.0, 0.0])
                c[0] += correct
                c[1] += n
        out = {src: c[0] / c[1] for src, c in sorted(counts.items()) if c[1]}
        total = [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]
        out["all"] = total[0] / total[1] if total[1] else 0.0
        return out


def critic_body_state(path: str) -> dict:
    from ..weights import load_model

    return load_model(path, dtype=torch.float32).state_dict()


def _progress_line(record: dict, stop: int, elapsed: float, steps_done: int) -> str:
    eta = elapsed / max(1, steps_done) * (stop - record["step"])
    probe = "".join(f" | probe {k} {v:.0%}" for k, v in record.get("probe", {}).items())
    grad = f" | grad norm {record['grad_norm']:.3f}" if record.get("grad_norm") is not None else ""
    return (f"step {record['step']}/{stop} | reward {record['reward_mean']:.3f} | pass@n {record['pass_at_n']:.2f} | "
            f"tokens {record['response_tokens_mean']:.0f} | tools {record['tool_calls_mean']:.1f}{grad} | "
            f"tis {record.get('tis_weight_mean', 1.0):.3f} | gen {record['generation_share']:.0%} | "
            f"{record['step_s']:.1f}s{probe} | {duration(elapsed)} elapsed, eta {duration(eta)}")


def _tensorboard(run_dir: Path):
    """A TensorBoard writer when the tensorboard package is installed (an optional extra), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _write_scalars(writer, record: dict, step: int, prefix: str = ""):
    for key, value in record.items():
        if isinstance(value, dict):
            _write_scalars(writer, value, step, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and key != "step":
            writer.add_scalar(prefix + key, value, step)
