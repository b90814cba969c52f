"""The difficulty curriculum (`train.py --stage filter`, docs/protocol.md section 5): K rollouts per question with
the current model; the questions with 1..K-1 correct are kept for the next RL stage.

Written to out_dir as each question finishes (append and flush, so a killed run resumes without redoing finished
questions): passes.rank{R}.jsonl, one line per question {id, correct, samples, data_source, response_tokens_mean,
response_tokens_max}. At the end: kept.jsonl (the kept questions in the JSON-lines question format, with their
pass count and length bucket), buckets.json (kept counts by data_source x trajectory-length bucket, the stage-2
buckets) and summary.json.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .. import run_config
from ..agent import Agent, AgentProcesses, WorkerPool
from ..files import atomic_write
from ..questions import Environments, portable_env
from ..reward import score_trajectories
from ..tokenizer import Tokenizer
from ..train import distributed
from ..weights import load_model
from .config import FilterConfig
from .prompts import load_question_files
from .rollouts import agent_config, check_prompts, make_judge, make_sampler, sampling_params, system_prompt
from .sync import rollout_dtype


def run_filter(cfg: FilterConfig, pool: WorkerPool | None = None) -> Path:
    """The filter's pass counts and kept questions under cfg.out_dir. `pool`: rollout workers kept by the caller
    (the demo's), used in place of `rollout_processes` workers of this run's own; it must have that many."""
    if pool is not None and (pool.processes, pool.threads) != (cfg.rollout_processes, max(1, cfg.threads)):
        raise ValueError(f"run_filter: a pool of {pool.processes} workers x {pool.threads} threads for "
                         f"rollout_processes={cfg.rollout_processes}, threads={cfg.threads}")
    env = distributed.init(cfg.device)
    try:
        return _run(cfg, env, pool)
    finally:
        distributed.shutdown(env)


# settings that change what a question's pass count means: a resumed run must keep them
_RESULT_KEYS = ("model", "questions", "samples_per_prompt", "temperature", "top_p", "top_k", "min_p", "max_turns",
                "max_response_tokens", "max_prompt_tokens", "ignore_eos", "system_prompt", "env", "env_settings",
                "judge", "judge_model", "seed")


def _check_same_settings(cfg: FilterConfig, out_dir: Path):
    """out_dir/config.toml records the run's settings; resuming pass counts made with others is refused."""
    path = out_dir / "config.toml"
    if path.is_file() and read_passes(out_dir):
        previous = run_config.to_dict(run_config.load(FilterConfig, path))
        changed = [k for k in _RESULT_KEYS if previous.get(k) != getattr(cfg, k)]
        if changed:
            raise run_config.RunConfigError(f"{out_dir} holds pass counts made with other settings "
                                            f"({', '.join(changed)} differ from {path}); choose another out_dir")
    run_config.save(cfg, path)


def read_passes(out_dir: Path) -> dict[str, dict]:
    """Every finished question's record, from all ranks' files. Only lines ended by a newline count: a last line
    without one was torn by a killed writer (even when what it holds parses), and _drop_torn_line cuts it before
    the file is appended to, so counting it would lose that question."""
    done = {}
    for path in sorted(out_dir.glob("passes.rank*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                done[str(record["id"])] = record
    return done


def _run(cfg: FilterConfig, env, pool: WorkerPool | None) -> Path:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_same_settings(cfg, out_dir)
    distributed.barrier(env)
    questions = load_question_files(cfg.questions)
    done = read_passes(out_dir)
    todo = [q for q in questions if q.id not in done][env.rank::env.world_size]
    if todo:
        _roll_out(cfg, env, todo, out_dir / f"passes.rank{env.rank}.jsonl", pool)
    distributed.barrier(env)
    if env.is_main:
        _write_results(cfg, questions, read_passes(out_dir), out_dir)
    distributed.barrier(env)
    return out_dir


def filter_agent(cfg: FilterConfig, device) -> Agent:
    """The agent that rolls out the filter's samples: the model, its sampler and the questions' environments (a
    module-level function, so that rollout worker processes can build it)."""
    tokenizer = Tokenizer.from_dir(cfg.model)
    model = load_model(cfg.model, device=device, dtype=rollout_dtype(cfg.rollout_dtype, device)).eval()
    return Agent(make_sampler(model, cfg, tokenizer), tokenizer, Environments(cfg.env or None, **cfg.env_settings),
                 sampling_params(cfg, tokenizer, cfg.seed), agent_config(cfg))


def _roll_out(cfg: FilterConfig, env, questions: list, passes_file: Path, pool: WorkerPool | None):
    check_prompts(questions, Tokenizer.from_dir(cfg.model), cfg, system_prompt(cfg))
    judge, k = make_judge(cfg), cfg.samples_per_prompt
    finished: dict[str, list] = {}
    _drop_torn_line(passes_file)
    with passes_file.open("a", encoding="utf-8") as out:
        def on_trajectory(t):
            group = finished.setdefault(t.question_id, [])
            group.append(t)
            if len(group) < k:
                return
            score_trajectories(group, judge)
            lengths = [len(x.response_ids) for x in group]
            record = {"id": t.question_id, "correct": int(sum(x.reward > 0 for x in group)), "samples": k,
                      "data_source": t.data_source, "response_tokens_mean": sum(lengths) / k,
                      "response_tokens_max": max(lengths)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            del finished[t.question_id]

        build = functools.partial(filter_agent, cfg, env.device)
        if cfg.rollout_processes == 1:
            agent = build()
        else:
            agent = pool.agent(build) if pool is not None else AgentProcesses(build, cfg.rollout_processes,
                                                                              threads=max(1, cfg.threads))
        agent.run(questions, n=k, on_trajectory=on_trajectory)


def _drop_torn_line(path: Path):
    """A killed writer can leave a last line without its newline; cut it so appending starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


def length_bucket(tokens: float, bounds: list[int]) -> str:
    for bound in bounds:
        if tokens < bound:
            return f"<{bound}"
    return f">={bounds[-1]}"


def _write_results(cfg: FilterConfig, questions: list, passes: dict[str, dict], out_dir: Path):
    high = cfg.max_correct if cfg.max_correct >= 0 else cfg.samples_per_prompt - 1
    kept, buckets = [], {}
    for q in questions:
        record = passes.get(q.id)
        if record is None or not cfg.min_correct <= record["correct"] <= high:
            continue
        bucket = length_bucket(record["response_tokens_mean"], cfg.length_buckets)
        source = q.data_source or "unknown"
        buckets.setdefault(source, {}).setdefault(bucket, 0)
        buckets[source][bucket] += 1
        kept.append({"id": q.id, "question": q.question, "answers": q.answers, "data_source": q.data_source,
                     "mask_url": q.mask_url, "env": portable_env(q.env, out_dir / "kept.jsonl"),
                     "correct": record["correct"], "length_bucket": bucket})
    atomic_write(out_dir / "kept.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    atomic_write(out_dir / "buckets.json", json.dumps(buckets, indent=2, sort_keys=True) + "\n")
    histogram = {}
    for record in passes.values():
        histogram[record["correct"]] = histogram.get(record["correct"], 0) + 1
    summary = {"questions": len(questions), "rolled_out": len(passes), "kept": len(kept),
               "kept_range": [cfg.min_correct, high], "samples_per_question": cfg.samples_per_prompt,
               "correct_histogram": {str(c): histogram[c] for c in sorted(histogram)}}
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
