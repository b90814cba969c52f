"""Evaluation (docs/protocol.md section 7): roll out, judge, and summarise — avg@k, pass@k, accuracy per source,
terminations, turns, tool calls and latency — as report.json and report.md."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .agent.loop import Agent, AgentConfig
from .agent.trajectory import Trajectory, write_trajectories
from .questions import Question
from .reward import answered, score_trajectories


def eval_sampling_params(greedy: bool = False, **overrides):
    """docs/protocol.md section 7 decoding: temperature 0.6, top_p 0.95, top_k 20, presence penalty 1.1."""
    from .sampler import SamplingParams

    base = dict(temperature=0.0) if greedy else dict(temperature=0.6, top_p=0.95, top_k=20, presence_penalty=1.1)
    return SamplingParams(**{**base, **overrides})


def evaluate(model, tokenizer, questions: list[Question], env, k: int = 4, *, params=None,
             config: AgentConfig | None = None, judge=None, sampler=None, out_dir=None, on_progress=None,
             title: str = "Evaluation", run_info: dict | None = None) -> dict:
    """Roll out k samples per question in eval mode, judge them (exact match unless `judge` is given) and return
    the report of `summarize` (plus `run_info` under "run"). With `out_dir`, also writes
    trajectories.jsonl, report.json and report.md there. The default limits are the protocol's: 100 model calls
    and no response budget of its own (the context bounds a trajectory)."""
    from .reward import ExactMatchJudge
    from .sampler import Sampler

    config = config or AgentConfig(mode="eval", max_turns=100, max_response_tokens=None)
    if sampler is None:
        sampler = Sampler(model)
    agent = Agent(sampler, tokenizer, env, params or eval_sampling_params(), config)
    trajectories = agent.run(questions, n=k, on_progress=on_progress)
    score_trajectories(trajectories, judge or ExactMatchJudge())
    report = summarize(trajectories, k)
    if run_info is not None:
        report["run"] = run_info
    if out_dir is not None:
        write_run(out_dir, trajectories, report, title)
    return report


def write_run(out_dir, trajectories: list[Trajectory], report: dict, title: str = "Evaluation") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_trajectories(trajectories, out / "trajectories.jsonl")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report, title))
    return out


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
        "per_trajectory": {
            "assistant_turns": _spread([t.num_turns for t in trajectories]),
            "turns_original": _spread([t.turns_original for t in trajectories]),
            "tool_calls": _spread([len(t.tool_calls) for t in trajectories]),
            "response_tokens": _spread([len(t.response_ids) for t in trajectories]),
            "sampled_tokens": _spread([t.sampled_tokens for t in trajectories]),
            "seconds": _spread([t.elapsed_s for t in trajectories]),
        },
        "tools": {name: {"calls": len(calls), "success_rate": sum(c.success for c in calls) / len(calls),
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
    lines += ["", f"Answered: {100 * report['answered']:.1f}% of trajectories. Judge: "
              + ", ".join(f"{m} {c}" for m, c in report["judge"].items()), "",
              "| termination | trajectories |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in report["termination"].items()]
    lines += ["", "| per trajectory | mean | p50 | p95 | max |", "|---|---:|---:|---:|---:|"]
    for name, s in report["per_trajectory"].items():
        label = _ROW_LABELS.get(name, name)
        lines.append(f"| {label} | {s['mean']:.1f} | {s['p50']:.1f} | {s['p95']:.1f} | {s['max']:.1f} |")
    if report["tools"]:
        lines += ["", "| tool | calls | success | latency mean (ms) | p50 | p95 |", "|---|---:|---:|---:|---:|---:|"]
        for name, s in report["tools"].items():
            lat = s["latency_s"]
            lines.append(f"| {name} | {s['calls']} | {100 * s['success_rate']:.1f}% | {1e3 * lat['mean']:.1f} | "
                         f"{1e3 * lat['p50']:.1f} | {1e3 * lat['p95']:.1f} |")
    return "\n".join(lines) + "\n"
