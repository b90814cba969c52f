"""Settings of the RL stages (`train.py --stage rl1 | rl2`) and of the curriculum filter (`--stage filter`).

Defaults are the paper's stage-1 recipe (docs/protocol.md section 5); configs/rl1_4b.toml and rl2_4b.toml spell
them out with their sources, configs/demo_rl.toml is the mini world's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import run_config
from ..train.core import TrainerConfig, check_choice, check_positive
from .loss import AGGREGATIONS, KL_KINDS


@dataclass
class RolloutSettings:
    """What the agent and the sampler need, shared by the RL stages and the filter."""
    questions: list[str] = field(default_factory=list)  # question files: JSON lines or LiteResearcher-Data parquet
    env: str = ""  # default environment (page-store database or service URL) for questions that name none
    env_settings: dict = field(default_factory=dict)  # tool output sizes, e.g. {results_per_query = 3}
    system_prompt: str = ""  # a file with the system prompt; "" is the training one (litere/system_prompt.txt)
    samples_per_prompt: int = 8  # n: trajectories per question (a GRPO group)
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.0
    max_turns: int = 40  # assistant turns per trajectory
    max_response_tokens: int = 32768  # sampled + tool tokens after the prompt
    max_prompt_tokens: int = 1024  # longer prompts are an error
    ignore_eos: bool = False  # turns run to their token limit (fixed-length rollouts, for benchmarks)
    tool_workers: int = 16  # threads running tool calls; 0 runs them inline (deterministic order)
    # the sampler: KV cache size in tokens (0: room for every trajectory of the rank at full length, capped at 1 GiB
    # on CPU, 60% of free memory on CUDA), tokens per forward pass, sequences at once
    cache_tokens: int = 0
    max_batch_tokens: int = 8192
    max_num_seqs: int = 256
    compile: str = ""  # "", "default" or "reduce-overhead": compile the sampler's decode step
    # trajectories the agent keeps in flight (0: the sampler's max_num_seqs). More than the sampler has rows only
    # wait, and more than its cache holds evict each other's caches, which are then recomputed: the demo's filter
    # of 1,024 trajectories in a 131,072-token cache ran 3x slower with all of them in flight (BENCHMARKS.md)
    max_in_flight: int = 0
    rollout_dtype: str = "auto"  # the sampler's weights: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    # the judge: exact_match, or llm (an OpenAI-compatible endpoint; its key comes from the environment variable)
    judge: str = "exact_match"
    judge_url: str = ""
    judge_model: str = ""
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_timeout: float = 60.0
    judge_retries: int = 2
    judge_concurrency: int = 8

    def check_rollout(self):
        check_choice(self, "judge", ("exact_match", "llm"))
        check_choice(self, "compile", ("", "default", "reduce-overhead"))
        check_choice(self, "rollout_dtype", ("auto", "bf16", "fp32"))
        check_positive(self, "samples_per_prompt", "max_turns", "max_response_tokens", "max_prompt_tokens",
                       "max_batch_tokens", "max_num_seqs")
        check_positive(self, "judge_concurrency", "judge_timeout")
        for key in ("top_k", "tool_workers", "cache_tokens", "judge_retries", "max_in_flight"):
            if getattr(self, key) < 0:
                raise run_config.RunConfigError(f"{key}={getattr(self, key)} must be >= 0")
        if not 0 < self.top_p <= 1 or not 0 <= self.min_p < 1:
            raise run_config.RunConfigError(f"top_p={self.top_p}, min_p={self.min_p}: need 0 < top_p <= 1 and "
                                            "0 <= min_p < 1")
        if self.temperature <= 0:
            raise run_config.RunConfigError(f"temperature={self.temperature}: RL samples from the policy; greedy "
                                            "(temperature 0) trajectories have no logprobs to train on")
        if self.judge == "llm" and not (self.judge_url and self.judge_model):
            raise run_config.RunConfigError("judge='llm' needs judge_url and judge_model")


@dataclass
class RLConfig(RolloutSettings, TrainerConfig):
    run_dir: str = "runs/rl1"
    lr: float = 1e-6
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    algo: str = "grpo"  # grpo | ppo
    prompts_per_step: int = 128
    # each step takes an equal share of prompts_per_step from every data_source, each source in its own seeded
    # order (prompts.py): question types stay balanced in every batch whatever their counts in the files
    balance_sources: bool = False
    max_steps: int = 0  # 0: `epochs` passes over the questions
    epochs: float = 1.0
    stop_after_steps: int = 0  # > 0: stop (checkpointed) after this many steps; a later run continues
    # advantages: grpo (r - mean) / (std + 1e-6) per group, or mean (r - mean, Dr. GRPO)
    advantage: str = "grpo"
    drop_zero_variance: bool = False  # leave all-correct / all-wrong groups out of the update
    # the update: ppo_epochs passes of mini_batches optimizer steps over the step's trajectories
    ppo_epochs: int = 1
    mini_batches: int = 1
    pack_tokens: int = 65536  # input tokens of one micro-batch on one rank (a longer trajectory gets its own)
    loss_agg: str = "seq-mean-token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.4
    dual_clip: float = 3.0  # 0 turns the dual clip off
    tis_cap: float = 2.0  # truncated importance sampling: w = min(exp(old_trainer - rollout), cap); 0 turns it off
    tis_veto: float = 1e-4  # a sequence with a token ratio below this gets w = 0; 0 turns the veto off
    kl_coef: float = 0.0  # > 0: KL to a frozen copy of the starting policy
    kl_kind: str = "k3"
    entropy_coef: float = 0.0  # > 0: entropy bonus
    # PPO: a critic (the policy's architecture with a scalar head), GAE over sampled tokens
    critic: str = ""  # a checkpoint to start the critic's body from; "" takes the policy's starting weights
    critic_lr: float = 1e-5
    critic_warmup_steps: int = 0  # steps that update the critic only
    gamma: float = 1.0
    lam: float = 1.0
    value_clip: float = 0.2
    # held-out probe: every probe_every steps, greedy accuracy on these questions per data_source (0: never)
    probe_questions: list[str] = field(default_factory=list)
    probe_limit: int = 100
    probe_every: int = 0
    probe_max_response_tokens: int = 0  # a probe trajectory's response budget (0: max_response_tokens)
    dump_rollouts: bool = True  # every step's trajectories in run_dir/rollouts/step_N.jsonl.gz

    def __post_init__(self):
        super().__post_init__()
        self.check_rollout()
        check_choice(self, "algo", ("grpo", "ppo"))
        check_choice(self, "advantage", ("grpo", "mean"))
        check_choice(self, "loss_agg", AGGREGATIONS)
        check_choice(self, "kl_kind", KL_KINDS)
        check_positive(self, "prompts_per_step", "ppo_epochs", "mini_batches", "pack_tokens", "probe_limit",
                       "critic_lr")
        if min(self.epochs, self.probe_every, self.probe_max_response_tokens) < 0:
            raise run_config.RunConfigError(f"epochs={self.epochs}, probe_every={self.probe_every}, "
                                            f"probe_max_response_tokens={self.probe_max_response_tokens} must be >= 0")
        if self.algo == "grpo" and self.samples_per_prompt < 2:
            raise run_config.RunConfigError(f"samples_per_prompt={self.samples_per_prompt}: GRPO compares the "
                                            "samples of a group; it needs at least 2")
        for key in ("clip_low", "clip_high", "tis_cap", "tis_veto", "kl_coef", "entropy_coef", "value_clip",
                    "stop_after_steps", "max_steps", "critic_warmup_steps"):
            if getattr(self, key) < 0:
                raise run_config.RunConfigError(f"{key}={getattr(self, key)} must be >= 0")
        if not 0 < self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise run_config.RunConfigError(f"gamma={self.gamma}, lam={self.lam}: need 0 < gamma <= 1, 0 <= lam <= 1")
        if self.dual_clip and self.dual_clip <= 1:
            raise run_config.RunConfigError(f"dual_clip={self.dual_clip} must be > 1 (or 0 to turn it off)")


@dataclass
class FilterConfig(RolloutSettings):
    """The difficulty curriculum: `samples_per_prompt` rollouts per question with `model`; keep the questions with
    1..K-1 correct (docs/protocol.md section 5)."""
    model: str = ""  # the policy that rolls out (a Hugging Face checkpoint directory)
    out_dir: str = "runs/filter"
    device: str = "auto"
    threads: int = 0
    # > 1: this many worker processes, each with `threads` threads (at least 1) and its own copy of the model, roll
    # out the rank's questions; on a CPU a process per core is faster than a thread per core (agent/processes.py)
    rollout_processes: int = 1
    seed: int = 0
    min_correct: int = 1
    max_correct: int = -1  # -1: samples_per_prompt - 1
    # stage-2 buckets: upper bounds (tokens) of the trajectory-length buckets; a longer trajectory joins the last
    length_buckets: list[int] = field(default_factory=lambda: [16384, 32768, 49152, 65536])

    def __post_init__(self):
        self.check_rollout()
        check_choice(self, "device", ("auto", "cpu", "cuda"))
        check_positive(self, "rollout_processes")
        if not self.model:
            raise run_config.RunConfigError("model=DIR is required (the checkpoint that rolls out)")
        if not self.questions:
            raise run_config.RunConfigError('questions=["FILE", ...] is required')


@dataclass
class RL2Config(RLConfig):
    """Stage 2: longer responses, more turns, temperature 1.0 (docs/protocol.md section 5)."""
    run_dir: str = "runs/rl2"
    temperature: float = 1.0
    max_response_tokens: int = 49152
    max_turns: int = 60
