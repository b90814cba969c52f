"""The main job: a small Qwen3 learns to research the bundled mini world, from nothing to an evaluation report,
then reinforcement learning from rewards alone on harder questions than it was taught.

    python -m litere.demo [--quick | --short] [--skip-rl] [--out DIR] [--fresh] [--threads N] [--budget-minutes M]
                          [--sampling] [--rl key=value ...] [key=value ...]

1. world      training worlds from many seeds and a held-out evaluation world whose names no training world uses
              (litere.world; compact tool outputs; questions 1/2 direct, 1/3 2-hop, 1/6 3-hop)
2. data       the teacher trajectories of direct and 2-hop questions with the demo's short system prompt
              (DEMO_SYSTEM_PROMPT); no 3-hop teacher trajectory is ever used
3. tokenizer  a byte-level BPE with the Qwen3 special tokens, trained on the training text (litere.bpe); numbers
              are spelt in two-digit tokens, which a small model copies far more reliably than single digits; with
              --whole-names, a name is spelt in the same tokens wherever it is written (BENCHMARKS.md, "The demo")
4. SFT        configs/demo_sft.toml through litere.train.sft, the trainer of `train.py --stage sft` (a fixed number of
              steps; README.md gives the time on 2 cores); exports DIR/sft/final (model and tokenizer)
5. eval       litere.evaluation.evaluate, the code of eval.py, on the held-out world (direct, 2-hop and 3-hop) and
              on a sample of training questions (an equal number per type), greedy, one sample per question; the
              evaluations and the filter roll out in a worker process per thread (litere.agent.processes)
6. filter     litere.rl.curriculum.run_filter, the code of `train.py --stage filter`, with RL's start model (the
              SFT export Profile.rl_start names: pre_decay, evaluated too, or final) and the rollout
              settings of configs/demo_rl.toml on a seeded sample of training questions (Profile.filter_questions per
              type): K samples each, the questions with 1..K-1 correct go to DIR/filter/kept.jsonl; a type with
              fewer than Profile.filter_min_kept kept is sampled again (Profile.filter_rounds rounds at most)
7. RL1        litere.rl.loop.train, the code of `train.py --stage rl1`, in this process: configs/demo_rl.toml from
              that model on the kept questions (an equal share of each type per step, balance_sources), with a
              greedy held-out probe of an equal number of each type every few steps; exports DIR/rl/final
8. eval       the RL model on the same held-out and training questions as the SFT model
9. report     DIR/report.md, report.html (litere.report: plots of the SFT and RL runs, accuracy before and after
              RL) and report.json: accuracy per type before and after RL, the filter's counts, the RL run's reward,
              probe, lengths, tool calls, importance weights, time split, and the stage times
Each stage reuses what an earlier run left (a finished world, data, tokenizer, SFT run, filter, RL run or evaluation
with the same settings and inputs) and sets aside one made otherwise (renamed `<stage>.replaced-<time>`, never
deleted); an interrupted SFT run, filter or RL run resumes (the RL run from its last checkpoint); --fresh starts over.
--rl key=value changes a setting of configs/demo_rl.toml (the filter takes the rollout settings it shares with the RL
stage), e.g. `--rl stop_after_steps=5` stops the RL run after step 5 (a later run without it continues the run); other
key=value settings are the SFT config's.

Why a short system prompt: the LiteResearcher prompt (litere/system_prompt.txt) is about 1,100 tokens with the
demo's 800-token vocabulary, more than a whole direct-question trajectory; it would take most of the training
compute. The demo model trains and is evaluated with DEMO_SYSTEM_PROMPT instead (AgentConfig.system_prompt).

--quick is a smoke run of every stage (a small world, 200 steps of SFT, a few questions in each evaluation with
1,024-token contexts, a filter that keeps every question, 2 RL steps of 3 questions; accuracy stays near zero; about
2.5 minutes on 2 cores);
--short stops the same SFT schedule after two thirds of its max_steps (into DIR/sft-short): a partial model, which
has begun to copy from its context but answers only part of the questions, headroom for RL; the filter, RL and
evaluations then run from it (DIR/filter-short, rl-short, eval-short, eval-rl-short, report-short);
--skip-rl stops after the SFT model's evaluation;
--budget-minutes M trains SFT for M minutes of wall-clock time instead of a step count (the schedule then follows
the clock, so runs are no longer reproducible).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import run_config
from .train import sft
from .agent.loop import Agent, AgentConfig, print_progress
from .agent.processes import AgentProcesses, WorkerPool
from .agent.trajectory import read_trajectories
from .evaluation import eval_sampling_params, evaluate
from .files import atomic_write
from .bpe import train_tokenizer
from .questions import Environments, Question, QuestionFileError, load_questions, portable_env, world_env_settings
from .sampler import Sampler
from .tokenizer import Tokenizer
from .weights import CheckpointError, load_model
from .world import BuildConfig, build, load_manifest

REPO = Path(__file__).resolve().parents[1]
DEMO_SYSTEM_PROMPT = "You are a research assistant: search, visit pages, then give the answer."
QUESTION_TYPES = {"world-direct": "direct", "world-2hop": "2-hop", "world-3hop": "3-hop"}
SFT_SOURCES = ("world-direct", "world-2hop")  # the teacher trajectories SFT trains on


@dataclass(frozen=True)
class Profile:
    out: str
    world: BuildConfig
    sft_config: str             # relative to the repository
    sft_overrides: tuple = ()
    sft_stop_fraction: float = 0.0  # > 0: stop the SFT run after this share of its max_steps (--short)
    suffix: str = ""            # of the profile's runs, evaluations and report: sft{suffix}/, rl{suffix}/, ...
    vocab_size: int = 800
    held_out_questions: int = 360   # of the evaluation world (a sample takes an equal number per type)
    training_questions: int = 120   # a sample of the training worlds' questions, an equal number per type
    # the curriculum filter's sample of training questions, per type, and how many of each type it must keep: RL's
    # 16 steps draw 16 of each type a step, 256 in all, and a type kept too few times over is memorised, not learnt
    # (with 8 a step: kept 2-hop questions each drawn 8.5 times, +3 points held out; 2.5-5.3 times, +9 to +21;
    # BENCHMARKS.md).
    # A type that kept fewer than `filter_min_kept` is sampled again, as many more of it, from questions no earlier
    # round took, up to `filter_rounds` rounds in all: how many questions a model passes 1..7 times in 8 moves with the
    # machine's float path ("RL on top"). The final SFT model solved none of 36 3-hop questions x 8.
    filter_questions: tuple = (("world-direct", 128), ("world-2hop", 128))
    filter_min_kept: int = 48
    filter_rounds: int = 4
    filter_overrides: tuple = ()
    rl_config: str = "configs/demo_rl.toml"
    rl_overrides: tuple = ()
    probe_questions: int = 20       # held-out questions per type in the RL run's probe
    # the SFT export the filter and RL start from: "pre_decay" (the model before its lr decay, which has not yet
    # learnt to copy reliably: room for RL to show a gain; the decay itself is the continued-SFT control), another
    # export of the SFT run (e.g. "decay_200" with export_during_decay = [200]) or "final"
    rl_start: str = "pre_decay"
    eval_context_tokens: int | None = None  # the evaluations' context per trajectory (None: EVAL_AGENT's)
    eval_compile: str = "default"  # the evaluations' sampler compiles its decode step ("": eager)
    # worker processes of one thread that roll out the evaluations and the filter (0: one per thread of the run;
    # the same trajectories as one process, sooner: BENCHMARKS.md, "Rollouts")
    rollout_processes: int = 0


# Quotas are drawn in the order direct, 2-hop, 3-hop from one generator per world: with 48 = 24 + 16 + 8 questions
# per world (360 = 180 + 120 + 60 held out) the direct and 2-hop questions and teacher trajectories are exactly
# those of the earlier 40-per-world world without 3-hop questions (60% / 40%), and so is the SFT data.
MIX = (1 / 2, 1 / 3, 1 / 6)
FULL_WORLD = BuildConfig(worlds=300, trajectories=48, eval_questions=360, mix=MIX)
# the smoke run samples eagerly: compiling the decode step's shapes would take longer than its few rollouts
QUICK_RL = ("max_steps=2", "prompts_per_step=3", "samples_per_prompt=4", "max_turns=6", "max_response_tokens=768",
            "probe_max_response_tokens=0", "probe_every=1", "checkpoint_every=1", 'compile=""')
PROFILES = {
    "full": Profile("runs/demo", FULL_WORLD, "configs/demo_sft.toml"),
    "short": Profile("runs/demo", FULL_WORLD, "configs/demo_sft.toml", sft_stop_fraction=2 / 3, suffix="-short",
                     rl_start="final"),
    "quick": Profile("runs/demo-quick", BuildConfig(worlds=40, trajectories=24, eval_questions=48, mix=MIX),
                     # a smoke run ends before numbers are learnt: no second decay; and trains eagerly: compiling
                     # the blocks would take longer than its 200 steps gain
                     "configs/demo_sft.toml", ("max_steps=200", "global_batch=2048", "rewarm_when_held_out_above=0",
                                               "compile_blocks=false"),
                     held_out_questions=12, training_questions=6,
                     filter_questions=(("world-direct", 2), ("world-2hop", 2), ("world-3hop", 2)),
                     # a smoke run's model solves next to nothing: keep every question so that RL has some
                     filter_overrides=("min_correct=0", "max_correct=1000"), filter_min_kept=0,
                     rl_overrides=QUICK_RL,
                     # a smoke run's models loop until the context is full: a shorter one bounds its evaluations
                     # and one process: starting workers would take longer than its few rollouts
                     probe_questions=1, eval_context_tokens=1024, eval_compile="", rollout_processes=1),
}
# the agent's limits in the evaluation: a teacher trajectory has 2 tool calls per hop and under 1,000 tokens, and
# no correct trajectory of the demo's models has been longer than 925; a longer one repeats its tool calls until
# the context is full (up to a quarter of the RL model's), and its end only costs time
EVAL_AGENT = dict(mode="eval", max_turns=12, max_response_tokens=None, max_context_tokens=2048,
                  final_answer_tokens=128, max_concurrent=64)


def log(message: str):
    print(f"[demo] {message}", flush=True)


def warn(message: str):
    print(f"[demo] WARNING: {message}", flush=True)
    print(f"[demo] WARNING: {message}", file=sys.stderr, flush=True)


def _stamp(settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(directory: Path, settings) -> bool:
    """Whether `directory` holds a finished stage built with `settings` (its .stamp file says so)."""
    stamp = directory / ".stamp"
    return stamp.is_file() and stamp.read_text().strip() == _stamp(settings)


def _mark_done(directory: Path, settings):
    (directory / ".stamp").write_text(_stamp(settings) + "\n")


def _read_stamp(directory: Path) -> str:
    return (directory / ".stamp").read_text().strip()


def _model_identity(model_dir: Path) -> str:
    """What names a model for reuse: the stamp of the demo stage that made it, or else a hash of its files (an RL
    checkpoint's hf/, a model from elsewhere)."""
    if (model_dir.parent / ".stamp").is_file():
        return _read_stamp(model_dir.parent)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json)")
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        with path.open("rb") as file:
            digest.update(path.name.encode() + b"\0" + hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()[:16]


def _set_aside(directory: Path, name: str, made: str):
    """A stage directory made with other settings or inputs is renamed, not deleted: a trained model or a run that
    was edited by hand can be hours of work. It keeps its name with `.replaced-<time>` added, beside the new one."""
    stem = f"{directory.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, n = directory.with_name(stem), 2
    while aside.exists():
        aside, n = directory.with_name(f"{stem}-{n}"), n + 1
    directory.rename(aside)
    log(f"{name}: {directory} was {made} with other settings or inputs; starting it again (the old one is kept as "
        f"{aside})")


def _open_stage(directory: Path, settings: dict, name: str):
    """Before a stage's work: a directory started with other settings or inputs is set aside (`_set_aside`); the
    settings are recorded as started, so that a rerun resumes what is there."""
    if directory.exists() and not _done(directory, {**settings, "state": "started"}):
        _set_aside(directory, name, "made")
    directory.mkdir(parents=True, exist_ok=True)
    _mark_done(directory, {**settings, "state": "started"})


# --- questions ----------------------------------------------------------------------------------------------------
def question_type(q: Question) -> str:
    return QUESTION_TYPES.get(q.data_source or "", q.data_source or "unknown")


def sample_questions(path: Path, n: int, seed: int = 0) -> list[Question]:
    """All the file's questions when n covers them, else a seeded sample of n with an equal number of each type
    (one more for the first types when n does not divide; a type with too few gives the rest to the others)."""
    questions = load_questions(path)
    if n >= len(questions):
        return questions
    rng = random.Random(seed)
    by_type: dict[str, list[Question]] = {}
    for q in questions:
        by_type.setdefault(q.data_source or "", []).append(q)
    pools = [rng.sample(items, len(items)) for _, items in sorted(by_type.items(), key=lambda kv: _type_rank(kv[0]))]
    chosen: list[Question] = []
    while len(chosen) < n:
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    return sorted(chosen, key=lambda q: q.id)


def _type_rank(source: str):
    names = list(QUESTION_TYPES)
    return (names.index(source), source) if source in names else (len(names), source)


def sample_per_type(path: Path, counts: dict[str, int], seed: int, leave: set[str] = frozenset()) -> list[Question]:
    """A seeded sample of `counts[data_source]` questions of each type (all of a type that has fewer), from the file's
    questions whose ids are not in `leave`."""
    rng = random.Random(seed)
    by_type: dict[str, list[Question]] = {}
    for q in load_questions(path):
        if q.id not in leave:
            by_type.setdefault(q.data_source or "", []).append(q)
    chosen = []
    for source, n in counts.items():
        items = by_type.get(source, [])
        chosen += rng.sample(items, min(n, len(items)))
    return sorted(chosen, key=lambda q: q.id)


def write_questions(path: Path, questions: list[Question]):
    """Questions in the JSON-lines format, each with its page store's path relative to the file (`portable_env`)."""
    rows = [{"id": q.id, "question": q.question, "answers": q.answers, "data_source": q.data_source,
             "mask_url": q.mask_url, "env": portable_env(q.env, path)} for q in questions]
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def type_counts(questions) -> dict[str, int]:
    """Questions per type (direct, 2-hop, 3-hop, then any other source)."""
    counts: dict[str, int] = {}
    for q in sorted(questions, key=lambda q: _type_rank(q.data_source or "")):
        counts[question_type(q)] = counts.get(question_type(q), 0) + 1
    return counts


# --- stages ---------------------------------------------------------------------------------------------------
def prepare_world(out: Path, config: BuildConfig) -> Path:
    world = out / "world"
    if _done(world, config.to_dict()):
        log(f"world: reusing {world}")
        return world
    if (world / ".stamp").is_file():
        _set_aside(world, "world", "built")
    else:
        shutil.rmtree(world, ignore_errors=True)  # an interrupted build
    log(f"world: building {config.worlds} training worlds x {config.trajectories} questions and the held-out "
        f"evaluation world ({config.eval_questions} questions) in {world}")
    build(config, world, log=None)
    _mark_done(world, config.to_dict())
    return world


def prepare_data(out: Path, world: Path) -> Path:
    """The world's SFT files with the demo system prompt, direct and 2-hop trajectories only: data/train.jsonl and
    data/eval.jsonl (held-out loss), and the prompt itself in data/system_prompt.txt (the RL stage's
    `system_prompt` setting)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "system_prompt.txt").write_text(DEMO_SYSTEM_PROMPT)
    settings = {"world": (world / ".stamp").read_text(), "system": DEMO_SYSTEM_PROMPT, "sources": SFT_SOURCES}
    if _done(data, settings):
        return data
    files = load_manifest(world)["files"]
    for source, target in ((files["train_sft"], "train.jsonl"), (files["eval_sft"], "eval.jsonl")):
        tmp = data / f".{target}.tmp"
        kept, dropped = 0, {}
        with open(world / source, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                record = json.loads(line)
                if record.get("data_source") not in SFT_SOURCES:
                    dropped[record.get("data_source")] = dropped.get(record.get("data_source"), 0) + 1
                    continue
                record["messages"] = [{"role": "system", "content": DEMO_SYSTEM_PROMPT},
                                      *(m for m in record["messages"] if m["role"] != "system")]
                dst.write(json.dumps(record, ensure_ascii=False) + "\n")
                kept += 1
        os.replace(tmp, data / target)
        log(f"data: {target}: {kept} teacher trajectories (direct and 2-hop); left out "
            + (", ".join(f"{n} {s}" for s, n in sorted(dropped.items())) or "none"))
    _mark_done(data, settings)
    return data


def training_texts(data: Path):
    """The system prompt once, then every other message of the training conversations."""
    yield DEMO_SYSTEM_PROMPT
    with open(data / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                if message["role"] != "system":
                    yield message["content"]


def prepare_tokenizer(out: Path, data: Path, vocab_size: int, whole_names: bool = False) -> Path:
    directory = out / "tokenizer"
    settings = {"data": (data / ".stamp").read_text(), "vocab_size": vocab_size, "digit_pairs": True,
                **({"whole_names": True} if whole_names else {})}
    if _done(directory, settings):
        log(f"tokenizer: reusing {directory}")
        return directory
    start = time.perf_counter()
    tokenizer = train_tokenizer(training_texts(data), vocab_size, directory, digit_pairs=True,
                                whole_names=whole_names)
    _mark_done(directory, settings)
    log(f"tokenizer: {tokenizer.vocab_size} tokens trained in {time.perf_counter() - start:.1f}s -> {directory}; "
        f"the system prompt is {len(tokenizer.encode(DEMO_SYSTEM_PROMPT))} tokens")
    return directory


def budget_overrides(minutes: float) -> list[str]:
    """SFT overrides for a time budget: the clock's warmup and cosine replace the step schedule, its held-out decay
    trigger, its rewarm and its exports (RL then starts from the final model)."""
    return [f"budget_minutes={minutes}", "max_steps=0", "decay_steps=0", "decay_when_held_out_below=0",
            "rewarm_when_held_out_above=0", "export_before_decay=false", "export_during_decay=[]"]


def sft_config(out: Path, profile: Profile, extra: list[str]) -> sft.SFTConfig:
    """The profile's SFT config with this run's paths."""
    paths = [f"run_dir={json.dumps(str(out / ('sft' + profile.suffix)))}", f"tokenizer={json.dumps(str(out / 'tokenizer'))}",
             f"train_files={json.dumps([str(out / 'data' / 'train.jsonl')])}",
             f"eval_files={json.dumps([str(out / 'data' / 'eval.jsonl')])}"]
    overrides = [*paths, *profile.sft_overrides, *extra]
    cfg = run_config.load(sft.SFTConfig, REPO / profile.sft_config, overrides)
    if profile.sft_stop_fraction and cfg.max_steps > 0 and not cfg.stop_after_steps:
        stop = max(1, round(profile.sft_stop_fraction * cfg.max_steps))
        cfg = run_config.load(sft.SFTConfig, REPO / profile.sft_config, [*overrides, f"stop_after_steps={stop}"])
    return cfg


def _sft_settings(cfg: sft.SFTConfig, data: Path, tokenizer: Path) -> dict:
    return {"config": run_config.to_dict(cfg), "data": (data / ".stamp").read_text(),
            "tokenizer": (tokenizer / ".stamp").read_text()}


def adopt_sft_run(out: Path, profile: Profile, extra: list[str]) -> Path:
    """Marks OUT's SFT directory, a copy of another run's (its checkpoints, metrics and log), as this demo's SFT stage
    started with the profile's settings and `extra`, so that the next `python -m litere.demo --out OUT` resumes it
    from its last checkpoint instead of setting it aside. Sound only where the copied run's settings decided nothing
    differently from these up to that checkpoint (e.g. a rewarm threshold that first matters at a later decay)."""
    cfg = sft_config(out, profile, extra)
    run_dir = Path(cfg.run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{run_dir}/checkpoints: no checkpoint to resume from (copy a run's SFT directory there)")
    _mark_done(run_dir, {**_sft_settings(cfg, out / "data", out / "tokenizer"), "state": "started"})
    return run_dir


def run_sft(cfg: sft.SFTConfig, data: Path, tokenizer: Path) -> Path:
    """Train unless a finished run with the same settings and inputs exists; returns the exported model."""
    run_dir = Path(cfg.run_dir)
    final = run_dir / "final"
    settings = _sft_settings(cfg, data, tokenizer)
    if (final / "config.json").is_file() and _done(run_dir, settings):
        log(f"SFT: reusing the finished run {run_dir}")
        return final
    if run_dir.exists() and not _done(run_dir, {**settings, "state": "started"}):
        _set_aside(run_dir, "SFT", "trained")
    run_dir.mkdir(parents=True, exist_ok=True)
    _mark_done(run_dir, {**settings, "state": "started"})
    length = (f"{cfg.budget_minutes:g} minutes" if cfg.budget_minutes > 0 else f"{cfg.max_steps} steps"
              if cfg.max_steps > 0 else f"{cfg.epochs:g} epoch(s)")
    if cfg.stop_after_steps > 0:
        length += f", stopping after step {cfg.stop_after_steps}"
    log(f"SFT: {cfg.model_preset} model, {length}, lr {cfg.lr:g}, batches of {cfg.global_batch} {cfg.batch_unit}, "
        f"{cfg.threads or torch.get_num_threads()} thread(s) -> {run_dir}")
    sft.train(cfg)
    _mark_done(run_dir, settings)
    return final


def training_summary(run_dir: Path) -> dict:
    """Steps, tokens, seconds and losses of the SFT run, from its metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    seconds = last.get("train_s", sum(r["step_s"] for r in records))
    tail = records[-20:]
    return {"steps": last["step"], "epochs": last["epoch"], "tokens": sum(r["tokens"] for r in records),
            "sequences": sum(r["sequences"] for r in records), "seconds": seconds,
            "tokens_per_s": sum(r["tokens"] for r in records) / max(seconds, 1e-9),
            "final_loss": sum(r["loss"] for r in tail) / len(tail), "held_out_loss": last.get("eval_loss")}


def eval_agent(model_dir: Path, questions_file: Path, settings: dict, params, compile: str) -> Agent:
    """The agent of a demo evaluation: the model, its sampler and the world's page store (a module-level function,
    so that rollout worker processes can build it)."""
    model = load_model(model_dir).eval()
    tokenizer = Tokenizer.from_dir(model_dir)
    sampler = Sampler(model, max_cache_tokens=settings["max_concurrent"] * settings["max_context_tokens"],
                      max_num_seqs=settings["max_concurrent"], stop_token_ids=tokenizer.stop_token_ids, seed=0,
                      compile=compile or None)
    env = Environments(None, **world_env_settings(questions_file))
    return Agent(sampler, tokenizer, env, params, AgentConfig(system_prompt=DEMO_SYSTEM_PROMPT, **settings))


def run_eval(name: str, evals: Path, model_dir: Path, questions_file: Path, questions: list, greedy: bool,
             label: str = "eval", context_tokens: int | None = None, compile: str = "", processes: int = 1,
             pool: WorkerPool | None = None) -> dict:
    """The report of evaluate() (eval.py's code) on `questions`, with the trajectories' well-formed fraction;
    reused when this model was already evaluated on the same questions with the same settings. With processes > 1,
    that many worker processes of one thread roll the questions out (the same trajectories, sooner): those of
    `pool` when given (workers kept between the demo's evaluations), else workers started for this one."""
    directory = evals / name
    settings = {**EVAL_AGENT, "max_context_tokens": context_tokens or EVAL_AGENT["max_context_tokens"]}
    params = eval_sampling_params(greedy=greedy, seed=0)
    info = {"model": str(model_dir), "model_stamp": _model_identity(model_dir),
            "questions": str(questions_file), "question_ids": [q.id for q in questions], "k": 1,
            "sampling": dataclasses.asdict(params), "agent": {**settings, "system_prompt": "DEMO_SYSTEM_PROMPT"},
            "compile": compile}
    if _done(directory, info):
        log(f"{label} ({name}): reusing {directory}")
        return json.loads((directory / "report.json").read_text())
    log(f"{label} ({name}): {len(questions)} questions ("
        + ", ".join(f"{n} {kind}" for kind, n in type_counts(questions).items()) + "), "
        + ("greedy" if greedy else "the evaluation sampling of docs/protocol.md section 7")
        + (f", {pool.processes if pool else processes} processes" if (pool or processes > 1) else ""))
    build = functools.partial(eval_agent, model_dir, questions_file, settings, params, compile)
    agent = pool.agent(build) if pool else AgentProcesses(build, processes) if processes > 1 else build()
    start = time.perf_counter()
    report = evaluate(None, None, questions, None, 1, params=params, agent=agent, out_dir=directory,
                      on_progress=print_progress, title=f"Demo evaluation: {label} {name}", run_info=info)
    sys.stderr.write("\n")
    trajectories = read_trajectories(directory / "trajectories.jsonl")
    report["well_formed"] = sum(map(well_formed, trajectories)) / max(1, len(trajectories))
    report["eval_seconds"] = time.perf_counter() - start
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _mark_done(directory, info)
    return report


def well_formed(trajectory) -> bool:
    """Every tool call parsed and ran, and the trajectory ended with an answer."""
    return (trajectory.termination == "answer" and trajectory.answer is not None
            and all(call.success for call in trajectory.tool_calls))


def rl_config(out: Path, profile: Profile, model_dir: Path, questions: Path, probe: Path, extra: list[str]):
    """configs/demo_rl.toml (the profile's) with this run's paths and the --rl overrides."""
    from .rl.config import RLConfig

    probe_count = sum(1 for _ in probe.open()) if probe.is_file() else 1
    paths = [f"run_dir={json.dumps(str(out / ('rl' + profile.suffix)))}", f"model={json.dumps(str(model_dir))}",
             f"questions={json.dumps([str(questions)])}", f"probe_questions={json.dumps([str(probe)])}",
             f"probe_limit={probe_count}", f"system_prompt={json.dumps(str(out / 'data' / 'system_prompt.txt'))}"]
    return run_config.load(RLConfig, REPO / profile.rl_config, [*paths, *profile.rl_overrides, *extra])


def filter_config(out: Path, profile: Profile, model_dir: Path, extra: list[str], processes: int = 1):
    """The curriculum filter's settings: the rollout settings of the RL config (and of the --rl overrides) that
    the filter shares, as `train.py --stage filter --config configs/demo_rl.toml` takes them; with processes > 1,
    that many rollout processes of one thread."""
    from .rl.config import FilterConfig

    shared = {f.name for f in dataclasses.fields(FilterConfig)}
    directory = out / f"filter{profile.suffix}"
    paths = [f"out_dir={json.dumps(str(directory))}", f"model={json.dumps(str(model_dir))}",
             f"questions={json.dumps([str(directory / 'questions.jsonl')])}",
             f"system_prompt={json.dumps(str(out / 'data' / 'system_prompt.txt'))}"]
    overrides = [o for o in [*profile.rl_overrides, *extra] if o.split("=", 1)[0].strip() in shared]
    workers = ["threads=1", f"rollout_processes={processes}"] if processes > 1 else []
    return run_config.load(FilterConfig, REPO / profile.rl_config,
                           [*paths, *overrides, *profile.filter_overrides, *workers], file_subset=True)


def run_curriculum(cfg, world: Path, counts: dict[str, int], pool: WorkerPool | None = None, min_kept: int = 0,
                   rounds: int = 1) -> dict:
    """The difficulty filter of `train.py --stage filter` (litere.rl.curriculum) on a seeded sample of training
    questions, `counts` per type; while a type has fewer than `min_kept` kept questions, `counts` more of it (of
    those no earlier round took), up to `rounds` rounds in all. Resumed when interrupted (a round's finished
    questions are not rolled out again), reused when finished. Returns its summary with the sampled and kept counts
    per type. `pool`: the demo's rollout workers (run_filter)."""
    from .rl.curriculum import read_passes, run_filter

    directory = Path(cfg.out_dir)
    train_file = world / "train_questions.jsonl"
    first = sample_per_type(train_file, counts, seed=1)
    how = ("threads", "rollout_processes")  # how the rollouts ran, not what they are: a finished filter is reused
    settings = {"config": {k: v for k, v in run_config.to_dict(cfg).items() if k not in how},
                "model": _read_stamp(Path(cfg.model).parent), "questions": [q.id for q in first]}
    if min_kept > 0 and rounds > 1:
        settings["more"] = {"min_kept": min_kept, "rounds": rounds}
    k = cfg.samples_per_prompt
    if _done(directory, settings) and (directory / "kept.jsonl").is_file():
        log(f"filter: reusing {directory}")
        sample = load_questions(directory / "questions.jsonl")
    else:
        _open_stage(directory, settings, "filter")
        sample, batch = [], first
        for round_ in range(1, rounds + 1):
            sample += batch
            write_questions(directory / "questions.jsonl", sample)
            log(f"filter{'' if round_ == 1 else f' round {round_}'}: {len(batch)} training questions ("
                + ", ".join(f"{n} {kind}" for kind, n in type_counts(batch).items())
                + f") x {k} samples at temperature {cfg.temperature:g}; keeping those with {cfg.min_correct}.."
                + f"{cfg.max_correct if cfg.max_correct >= 0 else k - 1} correct -> {directory / 'kept.jsonl'}")
            run_filter(cfg, pool)
            kept = type_counts(load_questions(directory / "kept.jsonl"))
            short = {source: n for source, n in counts.items()
                     if kept.get(QUESTION_TYPES.get(source, source), 0) < min_kept}
            if not short or round_ == rounds:
                break
            batch = sample_per_type(train_file, short, seed=1 + round_, leave={q.id for q in sample})
            exhausted = sorted(QUESTION_TYPES.get(s, s) for s in set(short) - {q.data_source for q in batch})
            if exhausted:
                warn(f"the filter has sampled every {', '.join(exhausted)} training question and kept fewer than "
                     f"{min_kept}")
            if not batch:
                break
            log("filter: kept " + ", ".join(f"{kept.get(QUESTION_TYPES.get(s, s), 0)} {QUESTION_TYPES.get(s, s)}"
                                            for s in short) + f", fewer than {min_kept}: sampling more")
        _mark_done(directory, settings)
    summary = json.loads((directory / "summary.json").read_text())
    kept = load_questions(directory / "kept.jsonl")
    summary.update(sampled_by_type=type_counts(sample), kept_by_type=type_counts(kept))
    summary["kept_by_type"] = {kind: summary["kept_by_type"].get(kind, 0) for kind in summary["sampled_by_type"]}
    histograms: dict[str, dict[int, int]] = {kind: {} for kind in summary["sampled_by_type"]}
    for record in read_passes(directory).values():
        counts_of = histograms.setdefault(QUESTION_TYPES.get(record["data_source"], record["data_source"]), {})
        counts_of[record["correct"]] = counts_of.get(record["correct"], 0) + 1
    summary["correct_by_type"] = {kind: {str(c): h[c] for c in sorted(h)} for kind, h in histograms.items()}
    log("filter: kept " + ", ".join(f"{summary['kept_by_type'][kind]} of {n} {kind}"
                                    for kind, n in summary["sampled_by_type"].items())
        + "; questions by correct samples: " + "; ".join(f"{kind} {h}" for kind, h in
                                                         summary["correct_by_type"].items()))
    for kind, n in summary["kept_by_type"].items():
        if n == 0:
            warn(f"the filter kept no {kind} question (correct samples of {summary['samples_per_question']}: "
                 f"{summary['correct_by_type'][kind]} questions): RL trains without {kind} questions")
    return summary


def probe_file(out: Path, world: Path, per_type: int) -> Path:
    """The RL run's held-out probe: `per_type` questions of each type of the evaluation world (seeded)."""
    path = out / "data" / f"probe_{per_type}.jsonl"
    questions = load_questions(world / "eval_questions.jsonl")
    counts = {source: per_type for source in sorted({q.data_source or "" for q in questions}, key=_type_rank)}
    write_questions(path, sample_per_type(world / "eval_questions.jsonl", counts, seed=2))
    return path


def rl_total_steps(cfg) -> int:
    from .rl.prompts import load_question_files, prompt_order

    if cfg.max_steps:
        return cfg.max_steps
    order = prompt_order(load_question_files(cfg.questions), cfg.prompts_per_step, cfg.seed, cfg.balance_sources)
    return order.total_steps(cfg.epochs)


def rl_steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return max((json.loads(line)["step"] for line in path.read_text().splitlines()), default=0)


def rl_inputs(start: Path, filter_dir: Path, cfg, probe: Path) -> dict:
    """What the RL stage starts from, beside its settings: the stamps of the stages that made its model and its
    questions, the question file, the probe's contents and the system prompt (a change to any makes RL again)."""
    return {"model": _read_stamp(start.parent), "questions": _read_stamp(filter_dir),
            "question_file": Path(cfg.questions[0]).name,
            "probe": hashlib.sha256(probe.read_bytes()).hexdigest()[:16], "system": DEMO_SYSTEM_PROMPT}


def run_rl(cfg, inputs: dict) -> Path | None:
    """The RL stage of `train.py --stage rl1` (litere.rl.loop) in this process: reused when a finished run with the
    same settings and inputs exists, resumed from its last checkpoint when one was interrupted or stopped early
    (stop_after_steps, which is left out of the settings compared). Returns the exported model, or None when the
    run stopped before its last step."""
    from .rl import loop

    run_dir = Path(cfg.run_dir)
    final = run_dir / "final"
    settings = {"config": {k: v for k, v in run_config.to_dict(cfg).items() if k != "stop_after_steps"}, **inputs}
    total = rl_total_steps(cfg)
    if (final / "config.json").is_file() and _done(run_dir, settings):
        log(f"RL: reusing the finished run {run_dir}")
        return final
    _open_stage(run_dir, settings, "RL")
    stop = f", stopping after step {cfg.stop_after_steps}" if 0 < cfg.stop_after_steps < total else ""
    log(f"RL: {cfg.algo.upper()} from {cfg.model}, {total} steps of {cfg.prompts_per_step} questions "
        f"({'an equal share of each type' if cfg.balance_sources else 'any type'}) x {cfg.samples_per_prompt} "
        f"samples{stop}, lr {cfg.lr:g}, {cfg.threads or torch.get_num_threads()} thread(s) -> {run_dir} "
        "(a run stopped or interrupted earlier resumes from its last checkpoint)")
    loop.train(cfg)
    done = rl_steps_done(run_dir)
    if done < total:
        log(f"RL: stopped after step {done} of {total}; run the same command without stop_after_steps to go on")
        return None
    _mark_done(run_dir, settings)
    return final


# --- the report -----------------------------------------------------------------------------------------------
def _typed(by_source: dict) -> dict:
    """{data_source: value} keyed by question type (direct, 2-hop, 3-hop, all) in that order."""
    out = {QUESTION_TYPES.get(k, k): v for k, v in sorted(by_source.items(), key=lambda kv: _type_rank(kv[0]))
           if k != "all"}
    if "all" in by_source:
        out["all"] = by_source["all"]
    return out


def accuracy_by_type(report: dict) -> dict:
    out = _typed({source: {"accuracy": acc["avg@k"], "questions": acc["questions"]}
                  for source, acc in report["by_data_source"].items()})
    out["all"] = {"accuracy": report["avg@k"], "questions": report["questions"]}
    return out


def split_summary(report: dict) -> dict:
    return {"accuracy": accuracy_by_type(report), "well_formed": report["well_formed"],
            "termination": report["termination"],
            "tool_calls_per_trajectory": report["per_trajectory"]["tool_calls"]["mean"],
            "assistant_turns_per_trajectory": report["per_trajectory"]["assistant_turns"]["mean"],
            "calls_per_tool": {name: s["calls"] for name, s in report["tools"].items()},
            "tool_success": {name: s["success_rate"] for name, s in report["tools"].items()},
            "eval_seconds": report.get("eval_seconds")}


def rl_summary(run_dir: Path, cfg) -> dict:
    """The RL run's figures from its metrics.jsonl: reward, training accuracy per type and the held-out probe at the
    start and the end, lengths, tool calls, importance weights and the time split."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward_mean" in r]
    probes = [r for r in records if r.get("probe")]
    if not steps:
        return {"steps": 0}
    first, last = steps[0], steps[-1]

    def mean(key, default=None):
        values = [r[key] for r in steps if r.get(key) is not None]
        return sum(values) / len(values) if values else default

    def first_last(key):
        return {"first": first.get(key), "last": last.get(key), "mean": mean(key)}

    split = {}
    for r in steps:
        for name, value in r["seconds"].items():
            split[name] = split.get(name, 0.0) + value
    step_seconds = sum(r["step_s"] for r in steps)
    return {
        "steps": last["step"], "prompts_per_step": cfg.prompts_per_step, "samples_per_prompt": cfg.samples_per_prompt,
        "balance_sources": cfg.balance_sources, "lr": cfg.lr, "temperature": cfg.temperature,
        "reward": {**first_last("reward_mean"), "per_step": [round(r["reward_mean"], 4) for r in steps]},
        "reward_by_type": {"first": _typed(first["accuracy_by_source"]), "last": _typed(last["accuracy_by_source"])},
        "probe": {"questions": cfg.probe_limit, "every": cfg.probe_every,
                  "max_response_tokens": cfg.probe_max_response_tokens or cfg.max_response_tokens,
                  "per_step": {r["step"]: _typed(r["probe"]) for r in probes}},
        "response_tokens": first_last("response_tokens_mean"), "tool_calls": first_last("tool_calls_mean"),
        "assistant_turns": first_last("assistant_turns_mean"), "trained_sequences": first_last("trained_sequences"),
        "tis_weight_mean": mean("tis_weight_mean"), "tis_weight_mean_min": min(
            (r["tis_weight_mean"] for r in steps if r.get("tis_weight_mean") is not None), default=None),
        "veto_fraction": mean("veto_fraction"), "veto_fraction_max": max(
            (r["veto_fraction"] for r in steps if r.get("veto_fraction") is not None), default=None),
        "generation_share": split.get("rollout", 0.0) / max(step_seconds, 1e-9),
        "seconds_per_step": step_seconds / len(steps),
        "seconds_split": {k: v / max(step_seconds, 1e-9) for k, v in split.items()},
        "probe_seconds": sum(r.get("probe_s", 0.0) for r in probes),
    }


def summary(profile_name: str, model_dir: Path, training: dict, evals: dict, stage_seconds: dict, world: Path,
            filtered: dict | None, rl: dict | None, rl_model: Path | None, rl_stopped: str | None = None) -> dict:
    """report.json: `evals` maps held_out / training_questions (after SFT) and rl_held_out /
    rl_training_questions (after RL, when it ran) to evaluation reports."""
    first = evals["held_out"]
    out = {"profile": profile_name, "checkpoint": str(model_dir), "world": str(world),
           "system_prompt": DEMO_SYSTEM_PROMPT, "sampling": first["run"]["sampling"], "training": training,
           **{name: split_summary(report) for name, report in evals.items()},
           "filter": filtered, "rl": rl, "rl_checkpoint": str(rl_model) if rl_model else None,
           "rl_stopped": rl_stopped}
    out["accuracy"] = {split: {**({"RL start": {k: v["accuracy"] for k, v in out["start_" + split]["accuracy"].items()}}
                                  if "start_" + split in out else {}),
                               "after SFT": {k: v["accuracy"] for k, v in out[split]["accuracy"].items()},
                               **({"after RL": {k: v["accuracy"] for k, v in out[f"rl_{split}"]["accuracy"].items()}}
                                  if f"rl_{split}" in out else {})}
                       for split in ("held_out", "training_questions")}
    out.update(seconds=stage_seconds, load_average=os.getloadavg())
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def report_title(s: dict) -> str:
    return f"litere demo: {'SFT and RL' if s.get('rl') else 'SFT'} on the mini world"


def summary_markdown(s: dict, heading: bool = True) -> str:
    columns = [(name, label) for name, label in (
        ("held_out", "held-out world (unseen names), after SFT"),
        ("start_held_out", "held-out, RL's start (SFT before its lr decay)"), ("rl_held_out", "held-out, after RL"),
        ("training_questions", "training worlds, after SFT"), ("rl_training_questions", "training worlds, after RL"))
        if s.get(name)]
    kinds = [k for k in ("direct", "2-hop", "3-hop", "all") if any(k in s[name]["accuracy"] for name, _ in columns)]

    def cell(split, kind):
        acc = split["accuracy"].get(kind)
        return f"{100 * acc['accuracy']:.1f}% ({acc['questions']})" if acc else "-"

    def row(label, fn):
        return f"| {label} | " + " | ".join(fn(s[name]) for name, _ in columns) + " |"

    t = s["training"]
    decoding = "greedy" if s["sampling"]["temperature"] == 0 else "docs/protocol.md section 7 sampling"
    lines = [f"# {report_title(s)}", ""] if heading else []
    lines += [f"Profile {s['profile']}; SFT checkpoint {s['checkpoint']}"
             + (f"; RL checkpoint {s['rl_checkpoint']}" if s.get("rl_checkpoint") else "")
             + f"; {decoding}, one sample per question. SFT saw direct and 2-hop teacher trajectories only; "
             "RL learns from rewards alone.", "",
             "| accuracy (questions) | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += [row(kind, lambda split, kind=kind: cell(split, kind)) for kind in kinds]
    lines += [row("well-formed trajectories", lambda split: _pct(split["well_formed"])),
              row("tool calls per trajectory", lambda split: f"{split['tool_calls_per_trajectory']:.2f}"),
              row("termination", lambda split: ", ".join(f"{k} {v}" for k, v in split["termination"].items())), "",
              f"SFT: {t['steps']} steps, {t['sequences']:,} trajectories ({t['epochs']:.2f} epochs), "
              f"{t['tokens']:,} tokens in {t['seconds'] / 60:.1f} minutes ({t['tokens_per_s']:,.0f} tokens/s); "
              f"final loss {t['final_loss']:.3f}"
              + (f", held-out loss {t['held_out_loss']:.3f}" if t["held_out_loss"] is not None else "") + "."]
    f = s.get("filter")
    if f:
        lines += ["", f"Curriculum filter (the SFT model, {f['samples_per_question']} samples per question): kept "
                  + ", ".join(f"{f['kept_by_type'][k]} of {n} {k}" for k, n in f["sampled_by_type"].items())
                  + f" ({f['kept_range'][0]}..{f['kept_range'][1]} correct); questions by correct samples: "
                  + "; ".join(f"{kind} " + ", ".join(f"{c}: {n}" for c, n in h.items())
                              for kind, h in f["correct_by_type"].items()) + "."]
    rl = s.get("rl")
    if rl and rl.get("steps"):
        reward = rl["reward"]
        by_type = rl["reward_by_type"]
        lines += ["", f"RL: {rl['steps']} steps of {rl['prompts_per_step']} questions"
                  + (" (an equal share of each type)" if rl["balance_sources"] else "")
                  + f" x {rl['samples_per_prompt']} samples at temperature {rl['temperature']:g}, lr {rl['lr']:g}. "
                  f"Reward {reward['first']:.3f} (step 1) -> {reward['last']:.3f} (step {rl['steps']}), by type "
                  + ", ".join(f"{k} {_num(by_type['first'].get(k))} -> {_num(by_type['last'].get(k))}"
                              for k in dict.fromkeys([*by_type["first"], *by_type["last"]])) + ". "
                  f"Response tokens {rl['response_tokens']['first']:.0f} -> {rl['response_tokens']['last']:.0f}, "
                  f"tool calls {rl['tool_calls']['first']:.2f} -> {rl['tool_calls']['last']:.2f} per trajectory; "
                  f"{rl['trained_sequences']['mean'] or 0:.0f} trajectories trained a step; "
                  f"TIS weight mean {_num(rl['tis_weight_mean'], 4)} (lowest step {_num(rl['tis_weight_mean_min'], 4)}), "
                  f"veto fraction {_num(rl['veto_fraction'], 4)} (highest step {_num(rl['veto_fraction_max'], 4)}); "
                  f"{rl['seconds_per_step']:.1f} s a step, generation {rl['generation_share']:.0%} of it ("
                  + ", ".join(f"{k} {v:.0%}" for k, v in rl["seconds_split"].items()) + ")"
                  + (f"; the probes took {rl['probe_seconds']:.0f} s more" if rl.get("probe_seconds") else "")
                  + "."]
        probes = rl["probe"]["per_step"]
        if probes:
            kinds = list(next(iter(probes.values())))
            budget = rl["probe"].get("max_response_tokens")
            lines += ["", f"Greedy held-out probe ({rl['probe']['questions']} questions, an equal number per type"
                      + (f", up to {budget:,} response tokens each" if budget else "") + "):",
                      "", "| step | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
            lines += [f"| {step} | " + " | ".join(_pct(p.get(k)) for k in kinds) + " |" for step, p in probes.items()]
    if s.get("rl_stopped"):
        lines += ["", s["rl_stopped"]]
    lines += ["", "Stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in s["seconds"].items()) + "; load average "
              + ", ".join(f"{x:.2f}" for x in s["load_average"]) + "."]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, name: str, result: dict, plots: dict, trajectories: list[Path]) -> tuple[Path, Path]:
    """report.json here; the plots and report.md / report.html through litere.report."""
    from . import report as reporting

    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    made = []
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    suffix = name.removeprefix("report")
    if plots.get("sft"):
        made.append(reporting.plot_sft(plots["sft"], plot_dir / f"sft{suffix}.png"))
    if plots.get("rl"):
        made.append(reporting.plot_rl(plots["rl"], plot_dir / f"rl{suffix}.png"))
        made.append(reporting.plot_rl_behaviour(plots["rl"], plot_dir / f"rl_behaviour{suffix}.png"))
    accuracy = result["accuracy"]["held_out"]
    if "after RL" in accuracy:
        start = "RL start" if "RL start" in accuracy else "after SFT"
        made.append(reporting.plot_accuracy(accuracy[start], accuracy["after RL"], plot_dir / f"accuracy{suffix}.png",
                                            labels=("RL's start" if start == "RL start" else "after SFT", "after RL")))
    return reporting.write_report(out, name, report_title(result), summary_markdown(result, heading=False), made,
                                  [p for p in trajectories if p.exists()])


# --- the job --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litere.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true",
                       help="smoke run of every stage: small world, 200 SFT steps, small evaluations, 2 RL steps")
    which.add_argument("--short", action="store_true",
                       help="stop SFT after two thirds of its max_steps: a partial model, headroom for RL")
    parser.add_argument("--skip-rl", action="store_true", help="stop after the SFT model's evaluation")
    parser.add_argument("--whole-names", action="store_true",
                        help="a tokenizer that spells a name in the same tokens in every context (litere.bpe)")
    parser.add_argument("--out", help="output directory (default runs/demo, or runs/demo-quick with --quick)")
    parser.add_argument("--fresh", action="store_true", help="delete the output directory first")
    parser.add_argument("--threads", type=int, help="CPU threads for every stage (default: the SFT config's)")
    parser.add_argument("--budget-minutes", type=float, help="train SFT for this many minutes instead of a step count")
    parser.add_argument("--sampling", action="store_true", help="evaluate with the sampling of docs/protocol.md section 7, not greedy")
    parser.add_argument("--held-out-questions", type=int, help="held-out questions to evaluate")
    parser.add_argument("--training-questions", type=int, help="training questions to evaluate")
    parser.add_argument("--rl", action="append", default=[], metavar="key=value",
                        help="an RL setting (configs/demo_rl.toml; the filter takes the rollout settings); repeatable")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="SFT config overrides (as train.py)")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "short" if args.short else "full"
    profile = PROFILES[name]
    out = Path(args.out or profile.out)
    extra = list(args.overrides)
    if args.threads:
        extra.append(f"threads={args.threads}")
    if args.budget_minutes is not None:
        extra += budget_overrides(args.budget_minutes)

    started = time.perf_counter()
    try:  # every config is checked before any work
        cfg = sft_config(out, profile, extra)
        threads = cfg.threads
        rl_extra = [*([f"threads={threads}"] if threads else []), *args.rl]
        processes = profile.rollout_processes or threads or torch.get_num_threads()
        dummy = out / "sft" / "final"
        rl_config(out, profile, dummy, out / "filter" / "kept.jsonl", out / "data" / "probe.jsonl", rl_extra)
        filter_config(out, profile, dummy, rl_extra, processes)
    except run_config.RunConfigError as e:
        print(f"litere.demo: {e}", file=sys.stderr)
        return 2
    if args.fresh and out.exists():
        log(f"--fresh: removing {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}

    def timed(stage: str, fn, *fn_args, **fn_kwargs):
        t0 = time.perf_counter()
        result = fn(*fn_args, **fn_kwargs)
        seconds[stage] = time.perf_counter() - t0
        return result

    filtered = rl = rl_model = rl_dir = rl_stopped = None
    pool = WorkerPool(processes) if processes > 1 else None  # kept from the first evaluation to the last
    try:
        world = timed("world", prepare_world, out, profile.world)
        data = timed("data", prepare_data, out, world)
        tokenizer = timed("tokenizer", prepare_tokenizer, out, data, profile.vocab_size, args.whole_names)
        model_dir = timed("sft", run_sft, cfg, data, tokenizer)
        if threads > 0:
            torch.set_num_threads(threads)
        held_file, seen_file = world / "eval_questions.jsonl", world / "train_questions.jsonl"
        held_questions = sample_questions(held_file, args.held_out_questions or profile.held_out_questions)
        seen_questions = sample_questions(seen_file, args.training_questions or profile.training_questions)
        greedy = not args.sampling
        evals = {}
        sft_evals = out / f"eval{profile.suffix}"
        evaluate_model = functools.partial(run_eval, context_tokens=profile.eval_context_tokens,
                                           compile=profile.eval_compile, processes=processes, pool=pool)
        evals["held_out"] = timed("eval_held_out", evaluate_model, "held_out", sft_evals, model_dir, held_file,
                                  held_questions, greedy)
        evals["training_questions"] = timed("eval_training", evaluate_model, "training", sft_evals, model_dir,
                                            seen_file, seen_questions, greedy)
        eval_dirs = [sft_evals]
        if not args.skip_rl:
            start_dir = model_dir.parent / profile.rl_start
            if not (start_dir / "config.json").is_file():
                warn(f"{start_dir} does not exist (the SFT run did not export it): RL starts from "
                     f"{model_dir}")
                start_dir = model_dir
            if start_dir != model_dir:
                start_evals = out / f"eval-{profile.rl_start}{profile.suffix}"
                evals["start_held_out"] = timed("eval_start_held_out", evaluate_model, "held_out", start_evals,
                                                start_dir, held_file, held_questions, greedy,
                                                label=f"eval of {start_dir.name}")
                eval_dirs.append(start_evals)
            model_dir_sft, model_dir = model_dir, start_dir
            fcfg = filter_config(out, profile, model_dir, rl_extra, processes)
            filtered = timed("filter", run_curriculum, fcfg, world, dict(profile.filter_questions), pool,
                             profile.filter_min_kept, profile.filter_rounds)
            kept = Path(fcfg.out_dir) / "kept.jsonl"
            probe = probe_file(out, world, profile.probe_questions)
            rcfg = rl_config(out, profile, model_dir, kept, probe, rl_extra)
            if sum(filtered["kept_by_type"].values()) < rcfg.prompts_per_step:
                warn(f"the filter kept {sum(filtered['kept_by_type'].values())} questions, fewer than a step's "
                     f"{rcfg.prompts_per_step}: RL trains on the filter's whole sample instead")
                rcfg = rl_config(out, profile, model_dir, Path(fcfg.questions[0]), probe, rl_extra)
            rl_model = timed("rl", run_rl, rcfg, rl_inputs(model_dir, Path(fcfg.out_dir), rcfg, probe))
            model_dir = model_dir_sft
            rl_dir = Path(rcfg.run_dir)
            rl = rl_summary(rl_dir, rcfg)
            if rl_model is None:
                rl_stopped = (f"RL stopped after step {rl['steps']} of {rl_total_steps(rcfg)} (stop_after_steps): "
                              "the RL model is not evaluated; the same command without it continues the run.")
            else:
                rl_evals = out / f"eval-rl{profile.suffix}"
                evals["rl_held_out"] = timed("eval_rl_held_out", evaluate_model, "held_out", rl_evals, rl_model,
                                             held_file, held_questions, greedy, label="eval after RL")
                evals["rl_training_questions"] = timed("eval_rl_training", evaluate_model, "training", rl_evals,
                                                       rl_model, seen_file, seen_questions, greedy,
                                                       label="eval after RL")
                eval_dirs.append(rl_evals)
    except (run_config.RunConfigError, ValueError, FileNotFoundError, QuestionFileError, CheckpointError) as e:
        print(f"litere.demo: {e}", file=sys.stderr)
        return 2
    finally:
        if pool is not None:
            pool.close()
    seconds["total"] = time.perf_counter() - started
    result = summary(name, model_dir, training_summary(Path(cfg.run_dir)), evals, seconds, world, filtered, rl,
                     rl_model, rl_stopped)
    print("\n" + summary_markdown(result))
    trajectories = [d / split / "trajectories.jsonl" for d in eval_dirs for split in ("held_out", "training")]
    if rl_dir is not None:
        trajectories.append(rl_dir / "rollouts")
    plots = {"sft": Path(cfg.run_dir) / "metrics.jsonl", "rl": rl_dir / "metrics.jsonl" if rl_dir else None}
    md, html = write_reports(out, f"report{profile.suffix}", result, plots, trajectories)
    log(f"report: {md}, {html} and {out / f'report{profile.suffix}.json'}; evaluation trajectories under "
        + ", ".join(map(str, eval_dirs)) + f"; SFT model (Hugging Face layout, tokenizer included): {model_dir}"
        + (f"; RL model: {rl_model}" if rl_model else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
