"""Evaluation (docs/protocol.md section 7): roll out, judge, and summarise — avg@k, pass@k, accuracy per source,
terminations, turns, tool calls and latency — as report.json and report.md."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from .agent.loop import Agent, AgentConfig, question_seed
from .agent.trajectory import SAMPLING_FIELDS, Trajectory
from .files import atomic_write
from .questions import Question
from .reward import answered, score_trajectories


def eval_sampling_params(greedy: bool = False, **overrides):
    """docs/protocol.md section 7 decoding: temperature 0.6, top_p 0.95, top_k 20, presence penalty 1.1."""
    from .sampler import SamplingParams

    base = dict(temperature=0.0) if greedy else dict(temperature=0.6, top_p=0.95, top_k=20, presence_penalty=1.1)
    return SamplingParams(**{**base, **overrides})


def evaluate(model, tokenizer, questions: list[Question], env, k: int = 4, *, params=None,
             config: AgentConfig | None = None, judge=None, sampler=None, out_dir=None, resume: bool = False,
             on_progress=None, title: str = "Evaluation", run_info: dict | None = None, agent=None) -> dict:
    """Roll out k samples per question in eval mode, judge them (exact match unless `judge` is given) and return
    the report of `summarize` (plus `run_info` under "run"). The default limits are the protocol's: 100 model
    calls and no response budget of its own (the context bounds a trajectory). With `agent` (an Agent, or
    AgentProcesses to roll out in several processes), the questions run with it instead of an agent built from
    model, sampler, env and config; `params` must be the sampling parameters it was built with.

    With `out_dir`, trajectories are appended to out_dir/trajectories.jsonl as they finish (unscored), and at the
    end the file is replaced by the scored trajectories in question order, beside report.json and report.md (each
    written atomically); `run_info` is kept in run.json. With `resume`, a run that was killed in the same out_dir
    goes on: the questions whose k samples are all written are not rolled out again (see resume_trajectories;
    ResumeError when the directory holds a run with other settings), and every trajectory is judged at the end."""
    from .reward import ExactMatchJudge
    from .sampler import Sampler

    params = params or eval_sampling_params()
    if agent is None:
        config = config or AgentConfig(mode="eval", max_turns=100, max_response_tokens=None)
        agent = Agent(sampler or Sampler(model), tokenizer, env, params, config)
    done, todo, log = [], questions, None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "trajectories.jsonl"
        if resume:
            check_same_run(out / "run.json", run_info)
            done, todo, _ = resume_trajectories(path, questions, k, params)
            if done:
                print(f"resuming {out}: {len(done)} trajectories of {len(questions) - len(todo)} questions already "
                      f"written; {len(todo)} questions to run", file=sys.stderr)
        else:
            path.write_bytes(b"")
        if run_info is not None:
            atomic_write(out / "run.json", json.dumps(run_info, indent=2) + "\n")
        log = TrajectoryLog(path)
    try:
        new = agent.run(todo, n=k, on_progress=on_progress, **({"on_trajectory": log.write} if log else {}))
    finally:
        if log:
            log.close()
    order = {q.id: i for i, q in enumerate(questions)}
    trajectories = sorted(done + new, key=lambda t: (order[t.question_id], t.sample_index))
    score_trajectories(trajectories, judge or ExactMatchJudge())
    report = summarize(trajectories, k)
    if run_info is not None:
        report["run"] = run_info
    if out_dir is not None:
        write_run(out_dir, trajectories, report, title)
    return report


def write_run(out_dir, trajectories: list[Trajectory], report: dict, title: str = "Evaluation") -> Path:
    """trajectories.jsonl, report.json and report.md in out_dir, each replaced atomically (a killed writer leaves
    the old file or the new one, never half of one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "trajectories.jsonl", "".join(_line(t) for t in trajectories))
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out / "report.md", report_markdown(report, title))
    return out


# --- files a killed run resumes from ----------------------------------------------------------------------------
class ResumeError(ValueError):
    """An output that cannot be resumed by this run (another run's file, a corrupt line)."""


def _line(t: Trajectory) -> str:
    return json.dumps(t.to_dict(), ensure_ascii=False) + "\n"


class TrajectoryLog:
    """Appends one JSON line per trajectory and flushes it, so a killed run loses at most the line being written
    (a torn last line, which resume_trajectories drops)."""

    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")

    def write(self, t: Trajectory) -> None:
        self.file.write(_line(t))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def expected_sampling(params, question_id: str, sample_index: int) -> dict:
    """The sampling settings the agent records for a sample drawn with run parameters `params`."""
    out = {name: getattr(params, name) for name in SAMPLING_FIELDS}
    out["seed"] = None if params.seed is None else question_seed(params.seed, question_id) + sample_index
    return out


def resume_trajectories(path, questions: list[Question], n: int, params=None) \
        -> tuple[list[Trajectory], list[Question], int]:
    """What a killed run left in `path` (JSON lines of trajectories, appended as they finished): (the finished
    trajectories of `questions` whose n samples 0..n-1 are all there, the questions still to run, the number of
    records kept that belong to no question of this run). The questions with a partial set are run again: their
    lines, and a torn last line, are removed by rewriting the file atomically; every other line is kept as it was.
    With `params`, every record must have been sampled with them (its recorded sampling settings, seeds derived
    from the run's seed included), else ResumeError: the file is another run's."""
    path = Path(path)
    if not path.is_file():
        return [], list(questions), 0
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    wanted = {q.id for q in questions}
    groups: dict[str, dict[int, tuple[bytes, Trajectory]]] = {}
    duplicated, kept_lines, foreign = set(), [], 0
    for line_no, line in enumerate(complete.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            t = Trajectory.from_dict(json.loads(line.decode("utf-8")))
        except (ValueError, TypeError) as e:
            raise ResumeError(f"{path}:{line_no}: not a trajectory record ({e}); move the file away to start "
                              "over") from None
        if t.question_id not in wanted:
            kept_lines.append(line)
            foreign += 1
            continue
        if params is not None:
            want = expected_sampling(params, t.question_id, t.sample_index)
            if t.sampling != want:
                raise ResumeError(f"{path}:{line_no}: question {t.question_id!r} sample {t.sample_index} was sampled "
                                  f"with {t.sampling}, but this run samples it with {want}: the file holds another "
                                  "run's trajectories; write elsewhere, or start over")
        group = groups.setdefault(t.question_id, {})
        if t.sample_index in group:
            duplicated.add(t.question_id)
        group[t.sample_index] = (line, t)
    done, todo = [], []
    for q in questions:
        group = groups.get(q.id, {})
        if q.id not in duplicated and all(i in group for i in range(n)):
            done += [group[i][1] for i in range(n)]
            kept_lines += [group[i][0] for i in sorted(group)]  # samples beyond n stay in the file
        else:
            todo.append(q)
    partial = sum(len(groups.get(q.id, {})) for q in todo)
    if torn or partial:
        atomic_write(path, b"".join(line + b"\n" for line in kept_lines))
    return done, todo, foreign


def check_same_run(path, run_info: dict | None, ignore=("judge",)) -> None:
    """ResumeError unless the run recorded in `path` (run.json) had the settings of `run_info` (what the judge
    is may change: every trajectory is judged again)."""
    path = Path(path)
    if run_info is None or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ResumeError(f"{path}: not a run record ({e})") from None
    now = json.loads(json.dumps(run_info))  # as it would be read back
    differ = sorted(key for key in set(before) | set(now)
                    if key not in ignore and before.get(key) != now.get(key))
    if differ:
        raise ResumeError(f"{path.parent} holds a run with other settings ({', '.join(differ)} differ); use another "
                          "output directory, or start over")


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with `correct` right."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n, got k={k}, n={n}")
    if n - correct < k:
        return 1.0
    miss = 1.0
    for i in range(k):
        miss *= (n - correct - i) / (n - i)
    return 1.0 - miss


def _spread(values: list[float]) -> dict:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    ordered = sorted(values)

    def pct(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"mean": sum(ordered) / len(ordered), "p50": pct(0.5), "p95": pct(0.95), "max": ordered[-1]}


def _accuracy(groups: dict[str, list[float]], k: int) -> dict:
    n_traj = sum(len(r) for r in groups.values())
    return {"questions": len(groups), "trajectories": n_traj,
            "avg@k": sum(sum(r) for r in groups.values()) / n_traj if n_traj else 0.0,
            "pass@k": (sum(pass_at_k(len(r), int(sum(r)), k) for r in groups.values()) / len(groups)
                       if groups else 0.0)}


def summarize(trajectories: list, k: int | None = None) -> dict:
    """The evaluation report of scored trajectories: avg@k (correct / all rollouts), pass@k (unbiased, over each
    question's samples), accuracy per data_source, termination and judge-method histograms, per-trajectory sizes,
    calls and latency per tool.

    Per trajectory, `assistant_turns` counts model calls; `turns_original` counts turns as the original (and the
    paper's turn figures) do: user turns after the prompt + assistant turns + 1 (Trajectory.turns_original)."""
    unscored = [t.question_id for t in trajectories if t.reward is None]
    if unscored:
        raise ValueError(f"{len(unscored)} trajectories are not scored yet (e.g. question {unscored[0]!r})")
    groups: dict[str, list[float]] = {}
    sources: dict[str, str] = {}
    for t in trajectories:
        groups.setdefault(t.question_id, []).append(t.reward)
        sources[t.question_id] = t.data_source or "unknown"
    k = k or (min(len(r) for r in groups.values()) if groups else 1)
    by_source: dict[str, dict[str, list[float]]] = {}
    for qid, rewards in groups.items():
        by_source.setdefault(sources[qid], {})[qid] = rewards
    tools: dict[str, list] = {}
    for t in trajectories:
        for call in t.tool_calls:
            tools.setdefault(call.name, []).append(call)
    return {
        "k": k,
        **_accuracy(groups, k),
        "by_data_source": {src: _accuracy(g, k) for src, g in sorted(by_source.items())},
        "answered": sum(answered(t.answer) for t in trajectories) / max(1, len(trajectories)),
        "termination": dict(Counter(t.termination for t in trajectories).most_common()),
        "judge": dict(Counter((t.judge or {}).get("method", "none") for t in trajectories).most_common()),
        # judge records with an error: an endpoint that could not be reached (exact_match_fallback), or replies
        # without a verdict (counted as Incorrect)
        "judge_errors": sum(bool((t.judge or {}).get("error")) for t in trajectories),
        "per_trajectory": {
            "assistant_turns": _spread([t.num_turns for t in trajectories]),
            "turns_original": _spread([t.turns_original for t in trajectories]),
            "tool_calls": _spread([len(t.tool_calls) for t in trajectories]),
            "response_tokens": _spread([len(t.response_ids) for t in trajectories]),
            "sampled_tokens": _spread([t.sampled_tokens for t in trajectories]),
            "seconds": _spread([t.elapsed_s for t in trajectories]),
        },
        "tools": {name: {"calls": len(calls), "success_rate": sum(c.success for c in calls) / len(calls),
                         "failed": sum(not c.success for c in calls),
                         "latency_s": _spread([c.latency_s for c in calls])}
                  for name, calls in sorted(tools.items())},
    }


_ROW_LABELS = {"assistant_turns": "assistant turns (model calls)",
               "turns_original": "turns_original (user turns after the prompt + assistant + 1; the paper's measure)"}


def report_markdown(report: dict, title: str = "Evaluation") -> str:
    k = report["k"]
    lines = [f"# {title}", "",
             f"{report['questions']} questions, {report['trajectories']} trajectories, k = {k}", "",
             f"| data source | questions | avg@{k} | pass@{k} |", "|---|---:|---:|---:|"]
    rows = list(report["by_data_source"].items()) + [("**all**", report)]
    for src, acc in rows:
        lines.append(f"| {src} | {acc['questions']} | {100 * acc['avg@k']:.1f} | {100 * acc['pass@k']:.1f} |")
    judge_errors = report.get("judge_errors", 0)
    lines += ["", f"Answered: {100 * report['answered']:.1f}% of trajectories. Judge: "
              + ", ".join(f"{m} {c}" for m, c in report["judge"].items())
              + (f" ({judge_errors} with a judge error: fallback or no verdict)" if judge_errors else ""), "",
              "| termination | trajectories |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in report["termination"].items()]
    lines += ["", "| per trajectory | mean | p50 | p95 | max |", "|---|---:|---:|---:|---:|"]
    for name, s in report["per_trajectory"].items():
        label = _ROW_LABELS.get(name, name)
        lines.append(f"| {label} | {s['mean']:.1f} | {s['p50']:.1f} | {s['p95']:.1f} | {s['max']:.1f} |")
    if report["tools"]:
        lines += ["", "| tool | calls | success | failed | latency mean (ms) | p50 | p95 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, s in report["tools"].items():
            lat = s["latency_s"]
            failed = s.get("failed", round(s["calls"] * (1 - s["success_rate"])))
            lines.append(f"| {name} | {s['calls']} | {100 * s['success_rate']:.1f}% | {failed} | "
                         f"{1e3 * lat['mean']:.1f} | {1e3 * lat['p50']:.1f} | {1e3 * lat['p95']:.1f} |")
    return "\n".join(lines) + "\n"
