"""Sampler under load: 1,000 requests of mixed lengths under a KV cache that holds a tenth of them.

The workload (seeded, `workload()`): prompts of 1-256 tokens and max_new_tokens of 1-160, greedy and seeded sampling
(temperature 0.7-1.3, top-k/top-p, penalties on some), stop tokens on some, a max_total_tokens budget on some;
some prompts sampled n = 2-4 times (one prefill, shared blocks), some resumable requests that run 2-3 turns, each
turn extended with forced tokens (a tool response) after a delay of 0-3 steps, and released after the last.
Requests arrive over the first steps, not all at once. `--requests` counts request ids (each sample of an n > 1
prompt is one).

It is run twice through the same driver on a tiny random model (tests/model_utils.py, fp32, CPU): once with a cache
that holds every request at its full allowed length (nothing waits for blocks), once with a cache of a tenth of
that. The constrained run must show preemption and recomputation, and nothing else: every request completes every
turn, tokens and finish reasons equal the unconstrained run's, logprobs to fp32 rounding (1e-5: a recomputed prefix
is prefilled in chunks, not decoded token by token, so its k/v differ in the last bits), and each turn ends with
the reason its own limits give ("stop" on one of its stop tokens, "length" at exactly its max_new_tokens, "budget"
at exactly its max_total_tokens), never early.

Two workloads: "all" (every sampled request uses top-k and/or top-p) and "mixed" (most sample the plain
distribution). The sampler draws a row without filters in vocabulary order, but in sorted order when a batch-mate
uses top-k/top-p (sampling.sample -> _sample_filtered), so under "mixed" a seeded request's tokens depend on its
batch-mates, and preemption, which changes the batches, shows it; "all" isolates the scheduler's claim.

Preemptions are counted by wrapping the scheduler's `_preempt` (a running sequence loses its blocks and is queued to
be recomputed) and the cache drops that `_make_room` makes of paused or queued requests; recomputed tokens are the
forward-pass tokens of the constrained run minus the unconstrained run's.

    python benchmarks/bench_sampler_load.py                 # 1,000 requests, both workloads (~1.5 min, 2 cores)
    python benchmarks/bench_sampler_load.py --requests 150  # the suite's size (tests/test_sampler_load.py)

Prints the hardware, the figures and one JSON line last.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from litere.sampler import Sampler, SamplingParams  # noqa: E402
from model_utils import random_model, small_config  # noqa: E402

VOCAB = 256
MAX_SEQ_LEN = 768  # the same in both runs, so the cache size never changes a request's budget
BLOCK_SIZE = 16
MAX_NUM_SEQS = 128
MAX_BATCH_TOKENS = 256  # long prompts are prefilled in chunks


@dataclass
class Turn:
    """One turn of a request group: the tokens forced before it (none for the first) and its params."""
    forced: list[int]
    params: SamplingParams


@dataclass
class Group:
    """One `add` call: a prompt sampled n times; resumable groups run several turns."""
    prompt: list[int]
    n: int
    turns: list[Turn]
    resumable: bool
    arrival: int  # the step before which it is added
    delays: list[int] = field(default_factory=list)  # steps each sample waits before each extend

    def footprint(self) -> int:
        """Tokens of one sample at its longest: prompt + every forced and allowed generated token, within the
        budget."""
        total = len(self.prompt)
        for turn in self.turns:
            total += len(turn.forced) + turn.params.max_new_tokens
        budget = min(self.turns[-1].params.max_total_tokens or MAX_SEQ_LEN, MAX_SEQ_LEN)
        return min(total, budget)


def _params(rng: random.Random, prompt_len: int, max_new: int, filters: str, seeded_only: bool = False
            ) -> SamplingParams:
    kind = rng.random()
    stop = tuple(rng.sample(range(VOCAB), rng.randint(2, 4))) if rng.random() < 0.5 else ()
    budget = None
    if rng.random() < 0.1 and max_new > 2:  # a budget that ends the turn before max_new_tokens
        budget = prompt_len + rng.randint(1, max_new - 1)
    common = dict(max_new_tokens=max_new, stop_token_ids=stop, max_total_tokens=budget)
    if kind < 0.3 and not seeded_only:
        return SamplingParams(temperature=0, **common)
    extra = {}
    if filters == "mixed":  # some requests sample the plain distribution
        if rng.random() < 0.3:
            extra["top_k"] = rng.choice([5, 20, 50])
        if rng.random() < 0.3:
            extra["top_p"] = rng.choice([0.8, 0.95])
        if rng.random() < 0.1:
            extra["min_p"] = 0.05
    else:  # every sampled request filters by top-k and/or top-p (see the module docstring)
        which = rng.choice(["k", "p", "kp"])
        if "k" in which:
            extra["top_k"] = rng.choice([5, 20, 50, 256])
        if "p" in which:
            extra["top_p"] = rng.choice([0.8, 0.95, 0.999])
        if rng.random() < 0.1:
            extra["min_p"] = 0.05
    if rng.random() < 0.15:
        extra["repetition_penalty"] = rng.choice([1.1, 1.3])
    if rng.random() < 0.15:
        extra["presence_penalty"] = rng.choice([0.5, 1.0])
    seed = rng.getrandbits(31) if rng.random() < 0.9 else None  # unseeded: drawn from the sampler's seed, in add order
    return SamplingParams(temperature=rng.choice([0.7, 1.0, 1.3]), seed=seed, **common, **extra)


def _length(rng: random.Random, short: tuple[int, int], medium: tuple[int, int], long: tuple[int, int],
            shares: tuple[float, float]) -> int:
    r = rng.random()
    lo, hi = short if r < shares[0] else medium if r < shares[0] + shares[1] else long
    return rng.randint(lo, hi)


def workload(num_requests: int, seed: int = 0, filters: str = "all") -> list[Group]:
    """Groups of requests, num_requests request ids in all, in arrival order. filters "all": every sampled
    request uses top-k and/or top-p; "mixed": most sample the plain distribution."""
    rng = random.Random(seed)
    groups, count = [], 0
    arrival_steps = max(1, num_requests // 20)  # requests keep arriving over the first steps
    while count < num_requests:
        prompt = [rng.randrange(VOCAB) for _ in range(_length(rng, (1, 32), (33, 128), (129, 256), (0.65, 0.3)))]
        kind = rng.random()
        if kind < 0.6:
            n, turns, resumable = 1, 1, False
        elif kind < 0.8:
            n, turns, resumable = rng.randint(2, 4), 1, False
        else:
            n, turns, resumable = rng.choice([1, 1, 2]), rng.randint(2, 3), True
        n = min(n, num_requests - count)
        max_new = _length(rng, (1, 8), (9, 64), (65, 160), (0.3, 0.5))
        if resumable:
            max_new = min(max_new, 64)
        first = Turn([], _params(rng, len(prompt), max_new, filters, seeded_only=n > 1))
        group_turns = [first]
        for _ in range(turns - 1):
            forced = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 40))]
            params = first.params if rng.random() < 0.5 else _params(rng, 0, rng.randint(1, 64), filters, n > 1)
            if params.max_total_tokens is not None:  # a later turn's budget counts the whole history
                params = dataclasses.replace(params, max_total_tokens=None)
            group_turns.append(Turn(forced, params))
        delays = [rng.randint(0, 3) for _ in range(turns - 1)]
        arrival = rng.randrange(arrival_steps) if groups else 0
        groups.append(Group(prompt, n, group_turns, resumable, arrival, delays))
        count += n
    groups.sort(key=lambda g: g.arrival)  # stable: the add order (which seeds unseeded requests) is fixed
    return groups


class Counters:
    """Preemptions and cache drops of one sampler, counted by wrapping its scheduler's methods."""

    def __init__(self, sampler: Sampler):
        self.preemptions = 0  # running sequences that lost their blocks
        self.preempted_tokens = 0  # cached tokens they lost
        self.idle_drops = 0  # paused or queued requests whose cache was dropped to make room
        self.idle_dropped_tokens = 0
        self.forward_tokens = 0
        self.steps = 0
        self.max_running = 0
        s = sampler.scheduler
        preempt, make_room, drop, schedule = s._preempt, s._make_room, s._drop_cache, s.schedule
        making_room = [False]

        def counted_preempt(seq):
            self.preemptions += 1
            self.preempted_tokens += seq.num_cached
            return preempt(seq)

        def counted_make_room(*args):
            making_room[0] = True
            try:
                return make_room(*args)
            finally:
                making_room[0] = False

        def counted_drop(seq):
            if making_room[0] and seq.status in ("paused", "waiting") and seq.blocks:
                self.idle_drops += 1
                self.idle_dropped_tokens += seq.num_cached
            return drop(seq)

        def counted_schedule():
            batch = schedule()
            self.steps += 1
            self.forward_tokens += sum(n for _, n in batch)
            self.max_running = max(self.max_running, len(s.running))
            return batch

        s._preempt, s._make_room, s._drop_cache, s.schedule = (counted_preempt, counted_make_room, counted_drop,
                                                                counted_schedule)


@dataclass
class TurnResult:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    total_tokens: int  # the request's tokens after this turn (prompt + every forced and generated token)


def run(model, groups: list[Group], cache_tokens: int) -> tuple[dict, Counters, float, Sampler]:
    """Drive a sampler through the workload: results[(group, sample)] = one TurnResult per turn."""
    sampler = Sampler(model, max_cache_tokens=cache_tokens, block_size=BLOCK_SIZE, max_num_seqs=MAX_NUM_SEQS,
                      max_batch_tokens=MAX_BATCH_TOKENS, max_seq_len=MAX_SEQ_LEN, seed=1234)
    counters = Counters(sampler)
    owner: dict[int, tuple[int, int]] = {}  # request id -> (group, sample)
    results: dict[tuple[int, int], list[TurnResult]] = {}
    lengths: dict[int, int] = {}  # request id -> its tokens so far
    pending: list[tuple[int, int, int]] = []  # (step due, request id, turn) extends waiting for their delay
    next_group, step = 0, 0
    start = time.perf_counter()
    while next_group < len(groups) or pending or sampler.has_work():
        while next_group < len(groups) and groups[next_group].arrival <= step:
            g = groups[next_group]
            ids = sampler.add(g.prompt, g.turns[0].params, n=g.n, resumable=g.resumable)
            for i, rid in enumerate(ids):
                owner[rid] = (next_group, i)
                results[(next_group, i)] = []
                lengths[rid] = len(g.prompt)
            next_group += 1
        for due, rid, turn in [p for p in pending if p[0] <= step]:
            pending.remove((due, rid, turn))
            t = groups[owner[rid][0]].turns[turn]
            sampler.extend(rid, t.forced, t.params)
            lengths[rid] += len(t.forced)
        for out in sampler.step():
            gi, i = owner[out.request_id]
            g, done = groups[gi], results[(gi, i)]
            lengths[out.request_id] += len(out.token_ids)
            done.append(TurnResult(out.token_ids, out.logprobs, out.finish_reason, lengths[out.request_id]))
            if not g.resumable:
                continue
            if len(done) < len(g.turns):
                pending.append((step + 1 + g.delays[len(done) - 1], out.request_id, len(done)))
            else:
                sampler.release(out.request_id)
        step += 1
    return results, counters, time.perf_counter() - start, sampler


def truncations(groups: list[Group], results: dict) -> list[str]:
    """Turns that ended otherwise than their own limits say: the reason each turn's tokens and limits imply."""
    problems = []
    for (gi, i), turns in results.items():
        g = groups[gi]
        if len(turns) != len(g.turns):
            problems.append(f"group {gi} sample {i}: {len(turns)} of {len(g.turns)} turns")
            continue
        for k, (turn, got) in enumerate(zip(g.turns, turns)):
            p = turn.params
            stops = set(p.stop_token_ids)
            budget = min(p.max_total_tokens or MAX_SEQ_LEN, MAX_SEQ_LEN)
            ids = got.token_ids
            where = f"group {gi} sample {i} turn {k}"
            if not ids or any(t in stops for t in ids[:-1]):
                problems.append(f"{where}: {len(ids)} tokens, a stop token before the last")
                continue
            want = ("stop" if ids[-1] in stops else "length" if len(ids) == p.max_new_tokens
                    else "budget" if got.total_tokens == budget else None)
            if got.finish_reason != want or len(ids) > p.max_new_tokens or got.total_tokens > budget:
                problems.append(f"{where}: {got.finish_reason!r} after {len(ids)} of {p.max_new_tokens} tokens, "
                                f"{got.total_tokens} of budget {budget} (expected {want!r})")
    return problems


def compare(free: dict, constrained: dict) -> tuple[int, float, float, list[str]]:
    """(turns compared, max |logprob difference|, share of logprobs bitwise equal, the turns whose tokens or finish
    reasons differ)."""
    differ, worst, turns, equal, count = [], 0.0, 0, 0, 0
    for key, want in free.items():
        got = constrained.get(key, [])
        if len(got) != len(want):
            differ.append(f"{key}: {len(got)} turns, unconstrained {len(want)}")
            continue
        for k, (a, b) in enumerate(zip(want, got)):
            turns += 1
            if a.token_ids != b.token_ids or a.finish_reason != b.finish_reason:
                differ.append(f"{key} turn {k}: tokens or finish reason differ")
            elif a.logprobs:
                worst = max(worst, max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)))
                equal += sum(x == y for x, y in zip(a.logprobs, b.logprobs))
                count += len(a.logprobs)
    return turns, worst, equal / max(count, 1), differ


def measure(num_requests: int, seed: int = 0, fraction: float = 0.1, filters: str = "all", model=None) -> dict:
    model = model or random_model(small_config(vocab_size=VOCAB), seed=3)
    groups = workload(num_requests, seed, filters)
    total = sum(g.n * g.footprint() for g in groups)
    cache = max(math.ceil(fraction * total / BLOCK_SIZE), math.ceil(MAX_SEQ_LEN / BLOCK_SIZE)) * BLOCK_SIZE
    free_cache = (total // BLOCK_SIZE + sum(g.n for g in groups) + 1) * BLOCK_SIZE  # every request whole blocks
    free, free_counts, free_s, free_sampler = run(model, groups, free_cache)
    tight, tight_counts, tight_s, tight_sampler = run(model, groups, cache)
    turns, worst, equal, differ = compare(free, tight)
    reasons: dict[str, int] = {}
    for turns_of in tight.values():
        for t in turns_of:
            reasons[t.finish_reason] = reasons.get(t.finish_reason, 0) + 1
    return {
        "filters": filters, "requests": sum(g.n for g in groups), "groups": len(groups),
        "shared_prompt_requests": sum(g.n for g in groups if g.n > 1),
        "resumable_requests": sum(g.n for g in groups if g.resumable),
        "turns": turns, "extends": sum(g.n * (len(g.turns) - 1) for g in groups),
        "footprint_tokens": total, "cache_tokens": cache, "cache_fraction": cache / total,
        "free_cache_tokens": free_cache,
        "completed": sum(len(v) == len(groups[k[0]].turns) for k, v in tight.items()),
        "finish_reasons": reasons,
        "preemptions": tight_counts.preemptions, "preempted_tokens": tight_counts.preempted_tokens,
        "idle_cache_drops": tight_counts.idle_drops, "idle_dropped_tokens": tight_counts.idle_dropped_tokens,
        "recomputed_tokens": tight_counts.forward_tokens - free_counts.forward_tokens,
        "unconstrained_preemptions": free_counts.preemptions + free_counts.idle_drops,
        "steps": {"unconstrained": free_counts.steps, "constrained": tight_counts.steps},
        "max_running": {"unconstrained": free_counts.max_running, "constrained": tight_counts.max_running},
        "identical": not differ, "turns_differing": len(differ), "differences": differ[:10],
        "max_logprob_diff": worst, "logprobs_bitwise_equal": equal,
        "truncations": len(truncations(groups, tight)), "truncation_examples": truncations(groups, tight)[:10],
        "unconstrained_truncations": len(truncations(groups, free)),
        "blocks_leaked": {"unconstrained": free_sampler.blocks.num_blocks - free_sampler.blocks.num_free,
                          "constrained": tight_sampler.blocks.num_blocks - tight_sampler.blocks.num_free},
        "wall_s": {"unconstrained": round(free_s, 2), "constrained": round(tight_s, 2)},
    }


def machine() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{name}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"load average {os.getloadavg()[0]:.1f}")


def report(r: dict):
    print(f"[filters {r['filters']}] requests {r['requests']} ({r['groups']} adds; {r['shared_prompt_requests']} in "
          f"n > 1 groups, {r['resumable_requests']} resumable with {r['extends']} extends), {r['turns']} turns")
    print(f"  cache {r['cache_tokens']:,} tokens for a total footprint of {r['footprint_tokens']:,} "
          f"({r['cache_fraction']:.1%}); unconstrained run: {r['free_cache_tokens']:,}")
    print(f"  constrained: {r['preemptions']} preemptions ({r['preempted_tokens']:,} cached tokens dropped), "
          f"{r['idle_cache_drops']} paused/queued caches dropped ({r['idle_dropped_tokens']:,} tokens), "
          f"{r['recomputed_tokens']:,} tokens recomputed; unconstrained: {r['unconstrained_preemptions']} preemptions")
    print(f"  steps {r['steps']}, most running at once {r['max_running']}")
    print(f"  completed {r['completed']}/{r['requests']}; tokens and finish reasons identical: "
          f"{'yes' if r['identical'] else 'NO (%d turns differ)' % r['turns_differing']}; max |logprob diff| "
          f"{r['max_logprob_diff']:.2e} ({r['logprobs_bitwise_equal']:.1%} of logprobs bitwise equal); truncations "
          f"{r['truncations']}; finish reasons {r['finish_reasons']}; blocks left allocated {r['blocks_leaked']}")
    print(f"  wall: unconstrained {r['wall_s']['unconstrained']:.1f} s, constrained {r['wall_s']['constrained']:.1f} s")
    for line in r["differences"] + r["truncation_examples"]:
        print("   ", line)


def passed(r: dict) -> bool:
    return (r["identical"] and r["max_logprob_diff"] <= 1e-5 and not r["truncations"]
            and r["completed"] == r["requests"] and not any(r["blocks_leaked"].values()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.1, help="cache size / the requests' total footprint")
    parser.add_argument("--filters", choices=("all", "mixed", "both"), default="both",
                        help="all: every sampled request uses top-k/top-p; mixed: most sample the plain distribution")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"model: small_config random (vocab {VOCAB}, 2 layers, hidden 64), fp32; block {BLOCK_SIZE}, "
          f"max_num_seqs {MAX_NUM_SEQS}, max_batch_tokens {MAX_BATCH_TOKENS}, max_seq_len {MAX_SEQ_LEN}")
    results = []
    for filters in (["all", "mixed"] if args.filters == "both" else [args.filters]):
        results.append(measure(args.requests, args.seed, args.fraction, filters))
        report(results[-1])
    print(json.dumps(results))
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
