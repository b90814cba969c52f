"""The main job: a small Qwen3 learns to research the bundled mini world, from nothing to an evaluation report.

    python -m litere.demo [--quick | --short] [--out DIR] [--fresh] [--threads N] [--budget-minutes M] [--sampling]

1. world      training worlds from many seeds and a held-out evaluation world whose names no training world uses
              (litere.world; compact tool outputs, 60% direct / 40% 2-hop questions)
2. data       the teacher trajectories with the demo's short system prompt (DEMO_SYSTEM_PROMPT)
3. tokenizer  a byte-level BPE with the Qwen3 special tokens, trained on the training text (litere.bpe); numbers
              are spelt in two-digit tokens, which a small model copies far more reliably than single digits
4. SFT        configs/demo_sft.toml through litere.train.sft, the trainer of `train.py --stage sft` (a fixed number of
              steps; README.md gives the time on 2 cores); exports DIR/sft/final (model and tokenizer)
5. eval       litere.evaluation.evaluate, the code of eval.py, on the held-out world and on a sample of training
              questions, greedy, one sample per question
Each stage reuses what an earlier run left (a finished world, data, tokenizer, SFT run or evaluation with the
same settings) and an interrupted SFT run resumes from its last checkpoint; --fresh starts over.

Why a short system prompt: the LiteResearcher prompt (litere/system_prompt.txt) is about 1,100 tokens with the
demo's 800-token vocabulary, more than a whole direct-question trajectory; it would take most of the training
compute. The demo model trains and is evaluated with DEMO_SYSTEM_PROMPT instead (AgentConfig.system_prompt).

--quick is a smoke run (a small world, 200 steps of training, a small evaluation; accuracy stays near zero);
--short stops the same schedule after 1,300 of its 1,900 steps (into DIR/sft-short): a partial model, which has
begun to copy from its context but answers only part of the questions, meant as a starting point for reinforcement
learning.
--budget-minutes M trains for M minutes of wall-clock time instead of a step count (the schedule then follows the
clock, so runs are no longer reproducible).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from .agent.loop import AgentConfig, print_progress
from .agent.trajectory import read_trajectories
from .evaluation import eval_sampling_params, evaluate
from .bpe import train_tokenizer
from .questions import Environments, load_questions, world_env_settings
from .sampler import Sampler
from .tokenizer import Tokenizer
from .weights import load_model
from .world import BuildConfig, build, load_manifest

REPO = Path(__file__).resolve().parents[1]
DEMO_SYSTEM_PROMPT = "You are a research assistant: search, visit pages, then give the answer."
QUESTION_TYPES = {"world-direct": "direct", "world-2hop": "2-hop", "world-3hop": "3-hop"}


@dataclass(frozen=True)
class Profile:
    out: str
    world: BuildConfig
    sft_config: str             # relative to the repository
    sft_overrides: tuple = ()
    suffix: str = ""            # of the profile's SFT run, evaluations and report: sft{suffix}/, eval{suffix}/, ...
    vocab_size: int = 800
    held_out_questions: int = 300
    training_questions: int = 100


FULL_WORLD = BuildConfig(worlds=300, trajectories=40, eval_questions=300, mix=(0.6, 0.4, 0.0))
PROFILES = {
    "full": Profile("runs/demo", FULL_WORLD, "configs/demo_sft.toml"),
    "short": Profile("runs/demo", FULL_WORLD, "configs/demo_sft.toml", ("stop_after_steps=1300",), suffix="-short"),
    "quick": Profile("runs/demo-quick", BuildConfig(worlds=40, trajectories=20, eval_questions=40, mix=(0.6, 0.4, 0.0)),
                     "configs/demo_sft.toml", ("max_steps=200", "eval_files=[]"),
                     held_out_questions=40, training_questions=20),
}
# the agent's limits in the evaluation (a teacher trajectory has 2 tool calls per hop and under 1,000 tokens)
EVAL_AGENT = dict(mode="eval", max_turns=12, max_response_tokens=None, max_context_tokens=3072,
                  final_answer_tokens=128, max_concurrent=64)


def log(message: str):
    print(f"[demo] {message}", flush=True)


def _stamp(settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(directory: Path, settings) -> bool:
    """Whether `directory` holds a finished stage built with `settings` (its .stamp file says so)."""
    stamp = directory / ".stamp"
    return stamp.is_file() and stamp.read_text().strip() == _stamp(settings)


def _mark_done(directory: Path, settings):
    (directory / ".stamp").write_text(_stamp(settings) + "\n")


# --- stages ---------------------------------------------------------------------------------------------------
def prepare_world(out: Path, config: BuildConfig) -> Path:
    world = out / "world"
    if _done(world, config.to_dict()):
        log(f"world: reusing {world}")
        return world
    shutil.rmtree(world, ignore_errors=True)
    log(f"world: building {config.worlds} training worlds x {config.trajectories} trajectories and the held-out "
        f"evaluation world ({config.eval_questions} questions) in {world}")
    build(config, world, log=None)
    _mark_done(world, config.to_dict())
    return world


def prepare_data(out: Path, world: Path) -> Path:
    """The world's SFT files with the demo system prompt: data/train.jsonl and data/eval.jsonl (held-out loss), and
    the prompt itself in data/system_prompt.txt (for the RL stage's `system_prompt` setting)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "system_prompt.txt").write_text(DEMO_SYSTEM_PROMPT)
    settings = {"world": (world / ".stamp").read_text(), "system": DEMO_SYSTEM_PROMPT}
    if _done(data, settings):
        return data
    files = load_manifest(world)["files"]
    for source, target in ((files["train_sft"], "train.jsonl"), (files["eval_sft"], "eval.jsonl")):
        tmp = data / f".{target}.tmp"
        with open(world / source, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                record = json.loads(line)
                record["messages"] = [{"role": "system", "content": DEMO_SYSTEM_PROMPT},
                                      *(m for m in record["messages"] if m["role"] != "system")]
                dst.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, data / target)
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


def prepare_tokenizer(out: Path, data: Path, vocab_size: int) -> Path:
    directory = out / "tokenizer"
    settings = {"data": (data / ".stamp").read_text(), "vocab_size": vocab_size, "digit_pairs": True}
    if _done(directory, settings):
        log(f"tokenizer: reusing {directory}")
        return directory
    start = time.perf_counter()
    tokenizer = train_tokenizer(training_texts(data), vocab_size, directory, digit_pairs=True)
    _mark_done(directory, settings)
    log(f"tokenizer: {tokenizer.vocab_size} tokens trained in {time.perf_counter() - start:.1f}s -> {directory}; "
        f"the system prompt is {len(tokenizer.encode(DEMO_SYSTEM_PROMPT))} tokens")
    return directory


def sft_config(out: Path, profile: Profile, extra: list[str]) -> sft.SFTConfig:
    """The profile's SFT config with this run's paths."""
    paths = [f"run_dir={json.dumps(str(out / ('sft' + profile.suffix)))}", f"tokenizer={json.dumps(str(out / 'tokenizer'))}",
             f"train_files={json.dumps([str(out / 'data' / 'train.jsonl')])}",
             f"eval_files={json.dumps([str(out / 'data' / 'eval.jsonl')])}"]
    return run_config.load(sft.SFTConfig, REPO / profile.sft_config, [*paths, *profile.sft_overrides, *extra])


def run_sft(cfg: sft.SFTConfig, data: Path, tokenizer: Path) -> Path:
    """Train unless a finished run with the same settings and inputs exists; returns the exported model."""
    run_dir = Path(cfg.run_dir)
    final = run_dir / "final"
    settings = {"config": run_config.to_dict(cfg), "data": (data / ".stamp").read_text(),
                "tokenizer": (tokenizer / ".stamp").read_text()}
    if (final / "config.json").is_file() and _done(run_dir, settings):
        log(f"SFT: reusing the finished run {run_dir}")
        return final
    if run_dir.exists() and not _done(run_dir, {**settings, "state": "started"}):
        log(f"SFT: {run_dir} was trained with other settings or inputs; starting it again")
        shutil.rmtree(run_dir)
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


def sample_questions(path: Path, n: int, seed: int = 0) -> list:
    questions = load_questions(path)
    if n >= len(questions):
        return questions
    return sorted(random.Random(seed).sample(questions, n), key=lambda q: q.id)


def run_eval(name: str, evals: Path, model_dir: Path, questions_file: Path, questions: list, greedy: bool) -> dict:
    """The report of evaluate() (eval.py's code) on `questions`, with the trajectories' well-formed fraction;
    reused when this model was already evaluated on the same questions with the same settings."""
    directory = evals / name
    agent = AgentConfig(system_prompt=DEMO_SYSTEM_PROMPT, **EVAL_AGENT)
    params = eval_sampling_params(greedy=greedy, seed=0)
    info = {"model": str(model_dir), "model_stamp": (model_dir.parent / ".stamp").read_text().strip(),
            "questions": str(questions_file), "question_ids": [q.id for q in questions], "k": 1,
            "sampling": dataclasses.asdict(params), "agent": {**EVAL_AGENT, "system_prompt": "DEMO_SYSTEM_PROMPT"}}
    if _done(directory, info):
        log(f"eval ({name}): reusing {directory}")
        report = json.loads((directory / "report.json").read_text())
        return report
    log(f"eval ({name}): {len(questions)} questions, {'greedy' if greedy else 'the evaluation sampling of docs/protocol.md section 7'}")
    model = load_model(model_dir).eval()
    tokenizer = Tokenizer.from_dir(model_dir)
    sampler = Sampler(model, max_cache_tokens=EVAL_AGENT["max_concurrent"] * EVAL_AGENT["max_context_tokens"],
                      max_num_seqs=EVAL_AGENT["max_concurrent"], stop_token_ids=tokenizer.stop_token_ids, seed=0)
    env = Environments(None, **world_env_settings(questions_file))
    start = time.perf_counter()
    report = evaluate(model, tokenizer, questions, env, 1, params=params, config=agent, sampler=sampler,
                      out_dir=directory, on_progress=print_progress, title=f"Demo evaluation: {name}",
                      run_info=info)
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


# --- the report -----------------------------------------------------------------------------------------------
def accuracy_by_type(report: dict) -> dict:
    out = {QUESTION_TYPES.get(source, source): {"accuracy": acc["avg@k"], "questions": acc["questions"]}
           for source, acc in report["by_data_source"].items()}
    out["all"] = {"accuracy": report["avg@k"], "questions": report["questions"]}
    return out


def summary(profile_name: str, out: Path, model_dir: Path, training: dict, held_out: dict, train_eval: dict,
            stage_seconds: dict, world: Path) -> dict:
    def split(report):
        return {"accuracy": accuracy_by_type(report), "well_formed": report["well_formed"],
                "termination": report["termination"],
                "tool_calls_per_trajectory": report["per_trajectory"]["tool_calls"]["mean"],
                "assistant_turns_per_trajectory": report["per_trajectory"]["assistant_turns"]["mean"],
                "calls_per_tool": {name: s["calls"] for name, s in report["tools"].items()},
                "tool_success": {name: s["success_rate"] for name, s in report["tools"].items()},
                "eval_seconds": report.get("eval_seconds")}

    return {"profile": profile_name, "checkpoint": str(model_dir), "world": str(world),
            "system_prompt": DEMO_SYSTEM_PROMPT, "sampling": held_out["run"]["sampling"],
            "training": training, "held_out": split(held_out), "training_questions": split(train_eval),
            "seconds": stage_seconds, "load_average": os.getloadavg()}


def summary_markdown(s: dict) -> str:
    held, seen = s["held_out"], s["training_questions"]
    kinds = [k for k in ("direct", "2-hop", "3-hop", "all") if k in held["accuracy"] or k in seen["accuracy"]]

    def cell(split, kind):
        acc = split["accuracy"].get(kind)
        return f"{100 * acc['accuracy']:.1f}% ({acc['questions']})" if acc else "-"

    t = s["training"]
    decoding = "greedy" if s["sampling"]["temperature"] == 0 else "docs/protocol.md section 7 sampling"
    lines = ["# litere demo: SFT on the mini world", "",
             f"Profile {s['profile']}; checkpoint {s['checkpoint']}; {decoding}, one sample per question.", "",
             "| accuracy (questions) | held-out world (unseen names) | training worlds |", "|---|---:|---:|"]
    lines += [f"| {kind} | {cell(held, kind)} | {cell(seen, kind)} |" for kind in kinds]
    lines += [f"| well-formed trajectories | {100 * held['well_formed']:.1f}% | {100 * seen['well_formed']:.1f}% |",
              f"| tool calls per trajectory | {held['tool_calls_per_trajectory']:.2f} | "
              f"{seen['tool_calls_per_trajectory']:.2f} |",
              "| termination | " + ", ".join(f"{k} {v}" for k, v in held["termination"].items()) + " | "
              + ", ".join(f"{k} {v}" for k, v in seen["termination"].items()) + " |", "",
              f"Training: {t['steps']} steps, {t['sequences']:,} trajectories ({t['epochs']:.2f} epochs), "
              f"{t['tokens']:,} tokens in {t['seconds'] / 60:.1f} minutes ({t['tokens_per_s']:,.0f} tokens/s); "
              f"final loss {t['final_loss']:.3f}"
              + (f", held-out loss {t['held_out_loss']:.3f}" if t["held_out_loss"] is not None else "") + ".",
              "Stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in s["seconds"].items()) + "; load average "
              + ", ".join(f"{x:.2f}" for x in s["load_average"]) + "."]
    return "\n".join(lines) + "\n"


# --- the job --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litere.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="smoke run: small world, 200 SFT steps, small eval")
    which.add_argument("--short", action="store_true",
                       help="stop after 1,300 of the 1,900 SFT steps: a partial model, headroom for RL")
    parser.add_argument("--out", help="output directory (default runs/demo, or runs/demo-quick with --quick)")
    parser.add_argument("--fresh", action="store_true", help="delete the output directory first")
    parser.add_argument("--threads", type=int, help="CPU threads for training and evaluation (default: config's)")
    parser.add_argument("--budget-minutes", type=float, help="train for this many minutes instead of a step count")
    parser.add_argument("--sampling", action="store_true", help="evaluate with the sampling of docs/protocol.md section 7, not greedy")
    parser.add_argument("--held-out-questions", type=int, help="held-out questions to evaluate")
    parser.add_argument("--training-questions", type=int, help="training questions to evaluate")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="SFT config overrides (as train.py)")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "short" if args.short else "full"
    profile = PROFILES[name]
    out = Path(args.out or profile.out)
    extra = list(args.overrides)
    if args.threads:
        extra.append(f"threads={args.threads}")
    if args.budget_minutes is not None:
        extra += [f"budget_minutes={args.budget_minutes}", "max_steps=0"]

    started = time.perf_counter()
    try:
        cfg = sft_config(out, profile, extra)
    except run_config.RunConfigError as e:
        print(f"litere.demo: {e}", file=sys.stderr)
        return 2
    if args.fresh and out.exists():
        log(f"--fresh: removing {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}

    def timed(stage: str, fn, *fn_args):
        t0 = time.perf_counter()
        result = fn(*fn_args)
        seconds[stage] = time.perf_counter() - t0
        return result

    try:
        world = timed("world", prepare_world, out, profile.world)
        data = timed("data", prepare_data, out, world)
        tokenizer = timed("tokenizer", prepare_tokenizer, out, data, profile.vocab_size)
        model_dir = timed("sft", run_sft, cfg, data, tokenizer)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        evals = out / f"eval{profile.suffix}"
        held = timed("eval_held_out", run_eval, "held_out", evals, model_dir, world / "eval_questions.jsonl",
                     sample_questions(world / "eval_questions.jsonl", args.held_out_questions
                                      or profile.held_out_questions), not args.sampling)
        seen = timed("eval_training", run_eval, "training", evals, model_dir, world / "train_questions.jsonl",
                     sample_questions(world / "train_questions.jsonl", args.training_questions
                                      or profile.training_questions), not args.sampling)
    except (run_config.RunConfigError, ValueError, FileNotFoundError) as e:
        print(f"litere.demo: {e}", file=sys.stderr)
        return 2
    seconds["total"] = time.perf_counter() - started
    result = summary(name, out, model_dir, training_summary(Path(cfg.run_dir)), held, seen, seconds, world)
    report = out / f"report{profile.suffix}"
    report.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = summary_markdown(result)
    report.with_suffix(".md").write_text(text)
    print("\n" + text)
    log(f"report: {report}.md and {report}.json; evaluation trajectories under {evals}; "
        f"checkpoint (Hugging Face layout, tokenizer included): {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
