"""What one RL step reports: rollout statistics over every rank's trajectories, and the loss metrics (sums over
micro-batches and ranks) turned into means and fractions."""
from __future__ import annotations

from collections import Counter

import torch

from ..train import distributed
from ..train.distributed import DistEnv
from .loss import effective_sample_size


def trajectory_summary(t, group: int) -> dict:
    """The few numbers of one trajectory that the step's metrics need (cheap to gather from every rank)."""
    return {"group": group, "reward": float(t.reward), "source": t.data_source or "unknown",
            "response_tokens": len(t.response_ids), "sampled_tokens": t.sampled_tokens, "turns": t.num_turns,
            "tool_calls": len(t.tool_calls), "failed_tool_calls": sum(not c.success for c in t.tool_calls),
            "termination": t.termination, "judge": (t.judge or {}).get("method", "none"),
            "judge_error": bool((t.judge or {}).get("error"))}


def rollout_metrics(summaries: list[dict]) -> dict:
    """Reward, accuracy, pass@n and group shares, lengths, turns, tool calls, terminations, judge methods, and the
    accuracy per data_source, over the step's trajectories (all ranks)."""
    rewards = torch.tensor([s["reward"] for s in summaries], dtype=torch.float64)
    groups: dict[int, list[float]] = {}
    for s in summaries:
        groups.setdefault(s["group"], []).append(s["reward"])
    correct = [sum(r > 0 for r in g) for g in groups.values()]
    by_source: dict[str, list[float]] = {}
    for s in summaries:
        by_source.setdefault(s["source"], []).append(s["reward"])
    n = max(1, len(summaries))

    def mean(key):
        return sum(s[key] for s in summaries) / n

    return {
        "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "accuracy": sum(s["reward"] > 0 for s in summaries) / n,
        "pass_at_n": sum(c > 0 for c in correct) / max(1, len(groups)),
        "groups_all_correct": sum(c == len(g) for c, g in zip(correct, groups.values())) / max(1, len(groups)),
        "groups_all_wrong": sum(c == 0 for c in correct) / max(1, len(groups)),
        "response_tokens_mean": mean("response_tokens"),
        "response_tokens_max": max((s["response_tokens"] for s in summaries), default=0),
        "sampled_tokens_mean": mean("sampled_tokens"), "assistant_turns_mean": mean("turns"),
        "tool_calls_mean": mean("tool_calls"), "failed_tool_calls": sum(s["failed_tool_calls"] for s in summaries),
        "termination": dict(Counter(s["termination"] for s in summaries).most_common()),
        "judge": dict(Counter(s["judge"] for s in summaries).most_common()),
        "judge_errors": sum(s["judge_error"] for s in summaries),  # no verdict, or the endpoint unreachable
        "accuracy_by_source": {k: sum(r > 0 for r in v) / len(v) for k, v in sorted(by_source.items())},
    }


def reduce_sums(sums: dict[str, torch.Tensor], env: DistEnv) -> dict[str, float]:
    """Sums of every rank added (keys ending in `_max`: the largest). A rank may lack keys that others have (one
    whose every micro-batch was padding has none), so the ranks first agree on the keys: each reduces the same ones,
    in the same order, a missing one as 0 (`_max`: -inf)."""
    keys = sorted(set().union(*gather_objects(sorted(sums), env)))
    out = {}
    for key in keys:
        is_max = key.endswith("_max")
        missing = torch.tensor(float("-inf") if is_max else 0.0, dtype=torch.float64)
        value = sums.get(key, missing).detach().to(torch.float64).reshape(())
        if env.distributed:
            value = value.clone().to(env.device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX if is_max else
                                         torch.distributed.ReduceOp.SUM)
        out[key] = float(value)
    return out


def add_into(total: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor]):
    for key, value in metrics.items():
        value = value.detach().to(torch.float64).cpu()
        if key not in total:
            total[key] = value
        elif key.endswith("_max"):
            total[key] = torch.maximum(total[key], value)
        else:
            total[key] = total[key] + value


def loss_metrics(update: dict[str, float], tis: dict[str, float]) -> dict:
    """Means and fractions of the update's and the importance weights' summed metrics."""
    out = {}
    tokens = update.get("tokens", 0.0)
    if tokens:
        out.update({"policy_loss": update["pg_loss"] / update["policy_updates"],
                    "ratio_mean": update["ratio_sum"] / tokens,
                    "clip_low_fraction": update["clip_low_tokens"] / tokens,
                    "clip_high_fraction": update["clip_high_tokens"] / tokens,
                    "dual_clip_fraction": update["dual_clip_tokens"] / tokens})
        for key in ("entropy", "kl"):
            if f"{key}_sum" in update:
                out[key] = update[f"{key}_sum"] / tokens
    if update.get("vf_tokens"):
        out["value_loss"] = update["vf_loss_sum"] / max(1.0, update["vf_minibatches"])
        out["vf_clip_fraction"] = update["vf_clip_tokens"] / update["vf_tokens"]
    if tis.get("tis_tokens"):
        out.update({"tis_weight_mean": tis["tis_weight_sum"] / tis["tis_tokens"],
                    "effective_sample_size": effective_sample_size(tis["tis_weight_sum"], tis["tis_weight_sq_sum"],
                                                                   tis["tis_tokens"]),
                    "veto_fraction": tis["veto_sequences"] / max(1.0, tis["sequences"]),
                    "logprob_diff_mean": tis["abs_logprob_diff_sum"] / tis["tis_tokens"],
                    "logprob_diff_max": tis["abs_logprob_diff_max"]})
    return out


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def all_reduce_max(value: int, env: DistEnv) -> int:
    if not env.distributed:
        return value
    t = torch.tensor(value, dtype=torch.int64, device=env.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    return distributed.all_reduce_sum(t, env).tolist()
