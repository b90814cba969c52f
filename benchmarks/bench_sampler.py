"""Sampler speed: litere's KV-cached sampler vs transformers `generate`, the batch-1 floors, and multi-turn extend.

1. Decode: greedy generation of N tokens after 64-token random prompts, batch 1 and 16, fp32 and bf16, on the `tiny`
   preset and on a random model of `qwen3-0.6b` shape, by three sides: our sampler eager, our sampler with its
   compiled decode step (`Sampler(compile="default")`; its compile time, spent in a warm-up run, is printed apart),
   and transformers. All get the same weights and prompts in the same run, alternating repeat by repeat.
   "decode tok/s" = batch / median time of one decode step (ours: per `step()`; transformers: between calls of a
   logits processor), so prefill and contention spikes do not count; "end-to-end tok/s" = batch * N / median wall
   time of the whole call (prefill included). Greedy token agreement is reported.
2. Floors for the 0.6B shape at batch 1: the matmul floor (median time of the model's linear layers, lm_head included,
   run alone on a 1-token input with F.linear) and the bandwidth roofline (bytes of those weights / large-copy
   bandwidth, counted as bytes copied per second).
   The matmul floor at batch 16 is printed too: at 16 rows the linears are no longer bandwidth-bound.
3. Multi-turn on `tiny`: 64 sequences x 4 turns, each turn generates G tokens then takes a 200-token tool response;
   `extend` (resumable requests: only new tokens prefilled) vs re-prefilling the whole history as a fresh request, with
   the eager and with the compiled decode step. The prompt is 512 tokens by default, the size of the agent's system
   prompt + question (~530 Qwen3 tokens).

Constructing a Sampler on CPU tunes glibc malloc for the whole process (litere.cpu.retain_freed_memory); it
happens before either side runs, so transformers runs with the same allocator settings.

Prints the hardware, a table and one JSON line last. The machine may be shared: read medians and ratios.

    python benchmarks/bench_sampler.py                  # everything (about 20 minutes on 2 cores, compiles included)
    python benchmarks/bench_sampler.py --quick          # tiny only, short runs (about a minute)
    python benchmarks/bench_sampler.py --presets qwen3-0.6b --dtypes bf16 --batches 1 --no-multiturn
    python benchmarks/bench_sampler.py --threads 1 --clock cpu   # on a busy machine: CPU seconds of one thread
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litere.config import ModelConfig  # noqa: E402
from litere.model import Qwen3  # noqa: E402
from litere.sampler import Sampler, SamplingParams  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROMPT_LEN = 64
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
now = CLOCKS["wall"]
DEVICE = torch.device("cpu")


def machine() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if DEVICE.type == "cuda":
        name = f"{torch.cuda.get_device_name(DEVICE)} (host: {name})"
    return (f"{name}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"clock {'cpu' if now is CLOCKS['cpu'] else 'wall'}, load average {os.getloadavg()[0]:.1f}")


def random_model(preset: str, dtype: torch.dtype, seed: int = 0) -> Qwen3:
    torch.manual_seed(seed)
    model = Qwen3(ModelConfig.preset(preset).replace(torch_dtype="float32"))
    model.init_weights(std=0.02, generator=torch.Generator().manual_seed(seed))
    return model.to(DEVICE, dtype).eval()


def hf_twin(model: Qwen3):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf = Qwen3ForCausalLM(Qwen3Config(**model.config.to_hf_dict()))
    hf.load_state_dict(model.state_dict())
    weight = model.model.embed_tokens.weight
    return hf.to(weight.device, weight.dtype).eval()


class _StepClock:
    """A transformers logits processor that only records when each decode step reaches it."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(now())
        return scores


def run_ours(model, prompts, new_tokens, compile=None):
    batch = len(prompts)
    per_seq = -(-(PROMPT_LEN + new_tokens) // 16) * 16  # whole blocks of 16: nothing waits or is preempted
    sampler = Sampler(model, max_cache_tokens=batch * per_seq, block_size=16, max_num_seqs=max(batch, 16),
                      compile=compile)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, stop_token_ids=())
    start = now()
    ids = [sampler.add(p, params)[0] for p in prompts]
    stamps, outputs = [], {}
    while sampler.has_work():
        for out in sampler.step():
            outputs[out.request_id] = out
        stamps.append(now())
    total = now() - start
    return total, _step_times(stamps), [outputs[i].token_ids for i in ids]


def run_hf(hf, prompts, new_tokens):
    from transformers import LogitsProcessorList

    clock = _StepClock()
    ids = torch.tensor(prompts, device=DEVICE)
    start = now()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                          logits_processor=LogitsProcessorList([clock]))
    total = now() - start
    return total, _step_times(clock.times), out[:, ids.shape[1]:].tolist()


def _step_times(stamps):
    """Intervals between consecutive decode steps (the first stamp closes the prefill)."""
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def bench_decode(preset, dtype_name, batches, new_tokens, repeats, with_hf, with_compiled):
    model = random_model(preset, DTYPES[dtype_name])
    hf = hf_twin(model) if with_hf else None
    vocab = model.config.vocab_size
    rows = []
    for batch in batches:
        prompts = torch.randint(0, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch)).tolist()
        sides = {"ours": lambda n: run_ours(model, prompts, n)}
        if with_compiled:
            sides["compiled"] = lambda n: run_ours(model, prompts, n, compile="default")
        if hf is not None:
            sides["hf"] = lambda n: run_hf(hf, prompts, n)
        warmup_s = {}
        for name, run in sides.items():
            start = time.perf_counter()
            run(2)  # warm-up; for the compiled side, the compilation of its graph for this batch class
            warmup_s[name] = time.perf_counter() - start
        totals = {name: [] for name in sides}
        steps = {name: [] for name in sides}
        tokens = {}
        for _ in range(repeats):
            for name, run in sides.items():
                total, step_times, tokens[name] = run(new_tokens)
                totals[name].append(total)
                steps[name] += step_times
        row = dict(preset=preset, dtype=dtype_name, batch=batch, new_tokens=new_tokens)
        for name in sides:
            row.update({f"{name}_decode_tok_s": batch / statistics.median(steps[name]),
                        f"{name}_e2e_tok_s": batch * new_tokens / statistics.median(totals[name]),
                        f"{name}_step_ms": 1e3 * statistics.median(steps[name])})
        if with_compiled:
            row["compile_s"] = warmup_s["compiled"] - warmup_s["ours"]
            row["compiled_vs_eager"] = row["ours_step_ms"] / row["compiled_step_ms"]
            row["compiled_agreement"] = _agreement(tokens["ours"], tokens["compiled"])
        if hf is not None:
            row["token_agreement"] = _agreement(tokens["ours"], tokens["hf"])
            for name in ("ours", "compiled") if with_compiled else ("ours",):
                row[f"{name}_decode_speedup"] = row["hf_step_ms"] / row[f"{name}_step_ms"]
                row[f"{name}_e2e_speedup"] = row[f"{name}_e2e_tok_s"] / row["hf_e2e_tok_s"]
        rows.append(row)
        print(_decode_line(row), flush=True)
    return rows


def _agreement(a, b):
    return sum(x == y for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)) / sum(map(len, a))


def _decode_line(r):
    line = f"{r['preset']:<11} {r['dtype']:<5} batch {r['batch']:>2}:"
    for name, label in (("ours", "eager"), ("compiled", "compiled"), ("hf", "transformers")):
        if f"{name}_step_ms" in r:
            line += (f" | {label} {r[f'{name}_decode_tok_s']:8.1f} tok/s ({r[f'{name}_step_ms']:6.1f} ms/step, "
                     f"e2e {r[f'{name}_e2e_tok_s']:7.1f})")
            if f"{name}_decode_speedup" in r:
                line += f" x{r[f'{name}_decode_speedup']:.2f}"
    if "compile_s" in r:
        line += f" | compile {r['compile_s']:.0f} s, compiled = eager tokens {100 * r['compiled_agreement']:.0f}%"
    if "token_agreement" in r:
        line += f" | greedy agreement with transformers {100 * r['token_agreement']:.0f}%"
    return line


def _median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = now()
        fn()
        times.append(now() - start)
    return 1e3 * statistics.median(times)


def copy_bandwidth_gbs(repeats: int = 7) -> float:
    src = torch.randn(256 * 2**20 // 4)  # 256 MiB
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), repeats)
    return src.numel() * src.element_size() / ms / 1e6


@torch.inference_mode()
def bench_floors(dtype_name, ours_steps_ms, repeats):
    """ours_steps_ms: {side: batch-1 ms per decode step} measured by bench_decode."""
    model = random_model("qwen3-0.6b", DTYPES[dtype_name])
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def matmul_floor_ms(rows):
        x = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}

        def linears():
            for w in weights:
                F.linear(x[w.shape[1]], w)

        return _median_ms(linears, repeats)

    floor_ms, floor16_ms = matmul_floor_ms(1), matmul_floor_ms(16)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    bandwidth = copy_bandwidth_gbs()
    roofline_ms = weight_bytes / bandwidth / 1e6
    row = dict(dtype=dtype_name, matmul_floor_ms=floor_ms, matmul_floor_batch16_ms=floor16_ms,
               weight_gb=weight_bytes / 1e9, copy_gb_s=bandwidth,
               roofline_ms=roofline_ms, matmul_floor_fraction_of_roofline=roofline_ms / floor_ms)
    for side, step_ms in ours_steps_ms.items():
        row.update({f"{side}_step_ms": step_ms, f"{side}_over_floor": step_ms / floor_ms,
                    f"{side}_fraction_of_roofline": roofline_ms / step_ms})
    line = (f"qwen3-0.6b  {dtype_name:<5} batch  1 floors: matmul {floor_ms:.1f} ms, roofline {roofline_ms:.1f} ms "
            f"({row['weight_gb']:.2f} GB at {bandwidth:.1f} GB/s; the matmuls reach "
            f"{100 * row['matmul_floor_fraction_of_roofline']:.0f}% of it; batch-16 matmul floor {floor16_ms:.1f} ms)")
    for side, step_ms in ours_steps_ms.items():
        line += (f"; {'eager' if side == 'ours' else side} {step_ms:.1f} ms/token = "
                 f"{row[f'{side}_over_floor']:.2f}x the matmul floor, "
                 f"{100 * row[f'{side}_fraction_of_roofline']:.0f}% of the roofline")
    print(line, flush=True)
    return row


def bench_multiturn(n_seqs, turns, prompt_len, gen_tokens, tool_tokens, repeats, compile_modes):
    model = random_model("tiny", torch.float32)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(7)
    prompts = torch.randint(0, vocab, (n_seqs, prompt_len), generator=gen).tolist()
    tools = torch.randint(0, vocab, (turns - 1, n_seqs, tool_tokens), generator=gen).tolist()
    params = SamplingParams(temperature=0, max_new_tokens=gen_tokens, stop_token_ids=())
    capacity = n_seqs * (prompt_len + turns * gen_tokens + (turns - 1) * tool_tokens + 16)

    def drain(sampler):
        outputs = {}
        while sampler.has_work():
            for out in sampler.step():
                outputs[out.request_id] = out
        return outputs

    def with_extend(compile):
        sampler = Sampler(model, max_cache_tokens=capacity, max_num_seqs=n_seqs, compile=compile)
        ids = [sampler.add(p, params, resumable=True)[0] for p in prompts]
        histories = [list(p) for p in prompts]
        for turn in range(turns):
            outs = drain(sampler)
            for i, rid in enumerate(ids):
                histories[i] += outs[rid].token_ids
                if turn < turns - 1:
                    sampler.extend(rid, tools[turn][i])
                    histories[i] += tools[turn][i]
        for rid in ids:
            sampler.release(rid)
        return histories

    def with_reprefill(compile):
        sampler = Sampler(model, max_cache_tokens=capacity, max_num_seqs=n_seqs, compile=compile)
        histories = [list(p) for p in prompts]
        for turn in range(turns):
            ids = [sampler.add(h, params)[0] for h in histories]
            outs = drain(sampler)
            for i, rid in enumerate(ids):
                histories[i] += outs[rid].token_ids
                if turn < turns - 1:
                    histories[i] += tools[turn][i]
        return histories

    prefill_extend = n_seqs * (prompt_len + (turns - 1) * (tool_tokens + 1))
    prefill_again = sum(n_seqs * (prompt_len + t * (gen_tokens + tool_tokens)) for t in range(turns))
    row = dict(model="tiny", dtype="fp32", seqs=n_seqs, turns=turns, prompt_tokens=prompt_len,
               gen_tokens_per_turn=gen_tokens, tool_tokens=tool_tokens, prefill_tokens_extend=prefill_extend,
               prefill_tokens_reprefill=prefill_again)
    for compile in compile_modes:
        suffix = "" if compile is None else "_compiled"
        if compile is not None:  # compile outside the timed runs: the graphs for batch >= 2 and batch 1
            for warmup in (prompts[:2], prompts[:1]):
                Sampler(model, max_cache_tokens=capacity, compile=compile).generate(warmup, params)
        times = {"extend": [], "reprefill": []}
        for _ in range(repeats):
            for name, fn in (("extend", with_extend), ("reprefill", with_reprefill)):
                start = now()
                histories = fn(compile)
                times[name].append(now() - start)
                if name == "extend":
                    extended = histories
                else:
                    reprefilled = histories
        same = _agreement(extended, reprefilled)
        row.update({f"extend{suffix}_s": statistics.median(times["extend"]),
                    f"reprefill{suffix}_s": statistics.median(times["reprefill"]),
                    f"token_agreement{suffix}": same})
        row[f"speedup{suffix}"] = row[f"reprefill{suffix}_s"] / row[f"extend{suffix}_s"]
        print(f"multi-turn  tiny  {'compiled' if compile else 'eager':<8} {n_seqs} seqs x {turns} turns, "
              f"{prompt_len}-token prompt, {gen_tokens} generated + {tool_tokens} tool tokens per turn: extend "
              f"{row[f'extend{suffix}_s']:.2f} s vs re-prefill {row[f'reprefill{suffix}_s']:.2f} s = "
              f"x{row[f'speedup{suffix}']:.2f} (prefilled tokens {prefill_extend} vs {prefill_again}; histories "
              f"agree {100 * same:.1f}%)", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,qwen3-0.6b")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=None, help="per request (default 128 tiny, 32 0.6B)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled decode step")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode comparison")
    parser.add_argument("--no-floors", action="store_true")
    parser.add_argument("--no-multiturn", action="store_true")
    parser.add_argument("--multiturn-gen", type=int, default=32, help="tokens generated per turn")
    parser.add_argument("--multiturn-prompt", type=int, default=512, help="prompt tokens of each sequence")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the floors are measured on the CPU only)")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="cpu: time this thread's CPU seconds (with --threads 1), steadier on a shared machine")
    parser.add_argument("--quick", action="store_true", help="tiny only, short runs, one repeat")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu counts this thread's CPU time only: use it with --threads 1")
    global now, DEVICE
    now = CLOCKS[args.clock]
    DEVICE = torch.device(args.device)
    presets = ["tiny"] if args.quick else args.presets.split(",")
    repeats = 1 if args.quick else args.repeats
    print(f"machine: {machine()}", flush=True)

    decode = []
    for preset in [] if args.no_decode else presets:
        new_tokens = args.new_tokens or (32 if args.quick else 128 if preset == "tiny" else 32)
        for dtype_name in args.dtypes.split(","):
            decode += bench_decode(preset, dtype_name, [int(b) for b in args.batches.split(",")], new_tokens,
                                   repeats, not args.no_hf, not args.no_compile)

    floors = []
    if not args.no_floors and "qwen3-0.6b" in presets and DEVICE.type == "cpu":
        for dtype_name in args.dtypes.split(","):
            row = next((r for r in decode
                        if r["preset"] == "qwen3-0.6b" and r["dtype"] == dtype_name and r["batch"] == 1), {})
            ours = {side: row[f"{side}_step_ms"] for side in ("ours", "compiled") if f"{side}_step_ms" in row}
            floors.append(bench_floors(dtype_name, ours, repeats=5))

    multiturn = None
    if not args.no_multiturn:
        modes = [None] if args.no_compile else [None, "default"]
        if args.quick:
            multiturn = bench_multiturn(16, 3, args.multiturn_prompt, 16, 200, 1, modes)
        else:
            multiturn = bench_multiturn(64, 4, args.multiturn_prompt, args.multiturn_gen, 200, max(1, repeats - 1),
                                        modes)

    result = {"benchmark": "sampler", "machine": machine(), "quick": args.quick, "decode": decode,
              "floors": floors, "multiturn": multiturn}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
