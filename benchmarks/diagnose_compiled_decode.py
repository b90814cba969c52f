"""Where the compiled decode step parts from the eager sampler: the model and workload of
tests/test_sampler_compiled.py::test_cuda_compiled_decode_gives_the_eager_tokens_and_logprobs (imported from it), with
every call of the compiled step checked against three eager computations of the same rows.

For each compiled call (the decoding rows of a step) the script computes the rows' hidden states three more ways,
before the graph writes their k/v, and prints the largest differences from the graph's:
  formula   `decode_step` run eagerly: the graph's own torch code, without the compiler
  kernels   the eager sampler's forward (`CacheStep`: paged attention and RMSNorm through `kernels`, Triton on CUDA)
  torch     the same forward with LITERE_KERNELS=torch (PyTorch's reference paged attention and RMSNorm)
So "formula" large and the others small points at the compiler, "kernels" alone at the project's Triton kernels.
The logits columns are the same differences after the output head; "argmax" counts rows whose greedy token differs
between the graph and the eager sampler's forward. Then the workload's tokens and logprobs, eager sampler against
compiled sampler, as the test compares them.

    python benchmarks/diagnose_compiled_decode.py --device cuda --mode default
    LITERE_KERNELS=torch python benchmarks/diagnose_compiled_decode.py --device cuda   # no Triton kernel anywhere
    python benchmarks/diagnose_compiled_decode.py --device cpu    # the script itself (every difference ~1e-6)
"""
import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from litere.sampler import Sampler  # noqa: E402
from litere.sampler.decode_graph import CompiledDecode, decode_step  # noqa: E402
from litere.sampler.kv_cache import CacheStep  # noqa: E402
from model_utils import random_model, small_config  # noqa: E402
from test_sampler_compiled import VOCAB, agent_like_workload  # noqa: E402


def the_tests_model(device):
    return random_model(small_config(vocab_size=VOCAB), seed=21).to(device)


@contextlib.contextmanager
def kernels_backend(name: str | None):
    before = os.environ.get("LITERE_KERNELS")
    if name is not None:
        os.environ["LITERE_KERNELS"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LITERE_KERNELS", None)
        else:
            os.environ["LITERE_KERNELS"] = before


def record_differences(rows: list):
    """Wraps CompiledDecode.__call__: appends one row of differences per call."""
    original = CompiledDecode.__call__

    def checked(self, input_ids, positions, slots, block_table, context_lens):
        model, cache = self.model, self.cache
        with torch.no_grad():
            formula, _ = decode_step(model, input_ids, positions, block_table, context_lens, cache.data)
            cu = torch.arange(len(input_ids) + 1, dtype=torch.int32, device=input_ids.device)
            eager = {}
            for name, forced in (("kernels", None), ("torch", "torch")):
                with kernels_backend(forced):
                    # writes the rows' k/v at their slots; the graph reads none of those and overwrites them
                    step = CacheStep(cache, slots, block_table, cu, context_lens, 1)
                    eager[name] = model(input_ids, positions, cache=step)
            graph = original(self, input_ids, positions, slots, block_table, context_lens)
            logits = {name: model.logits(h).float() for name, h in
                      (("graph", graph), ("formula", formula), *eager.items())}
            scale = graph.abs().max().item()
            row = {"rows": len(input_ids), "width": block_table.shape[1], "|hidden| max": scale}
            for name, h in (("formula", formula), *eager.items()):
                row[f"hidden {name}"] = (graph - h).abs().max().item()
                row[f"logits {name}"] = (logits["graph"] - logits[name]).abs().max().item()
            row["argmax"] = int((logits["graph"].argmax(-1) != logits["kernels"].argmax(-1)).sum())
            rows.append(row)
        return graph

    CompiledDecode.__call__ = checked
    return original


def compare_results(eager: dict, compiled: dict) -> list[str]:
    lines = []
    for key, (tokens, logprobs) in eager.items():
        other_tokens, other_logprobs = compiled.get(key, ([], []))
        same = next((i for i, (a, b) in enumerate(zip(tokens, other_tokens)) if a != b), None)
        shared = len(tokens) if same is None else same
        gap = max((abs(a - b) for a, b in zip(logprobs[:shared], other_logprobs[:shared])), default=0.0)
        verdict = "same tokens" if same is None and len(tokens) == len(other_tokens) else (
            f"token {same}: eager {tokens[same]}, compiled {other_tokens[same]}" if same is not None
            else f"lengths {len(tokens)} / {len(other_tokens)}")
        lines.append(f"  request {key}: {verdict}; largest logprob difference before it {gap:.3g}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", default="default", choices=["default", "reduce-overhead"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, compile={args.mode}, "
          f"LITERE_KERNELS={os.environ.get('LITERE_KERNELS', '(unset)')}, "
          f"allow_tf32 {torch.backends.cuda.matmul.allow_tf32}")
    model = the_tests_model(device)
    eager = agent_like_workload(Sampler(model, max_cache_tokens=4096, block_size=8))
    rows: list = []
    original = record_differences(rows)
    try:
        compiled = agent_like_workload(Sampler(model, max_cache_tokens=4096, block_size=8, compile=args.mode))
    finally:
        CompiledDecode.__call__ = original
    columns = list(rows[0]) if rows else []
    print("| call | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for i, row in enumerate(rows):
        print(f"| {i} | " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    worst = {c: max(r[c] for r in rows) for c in columns if c.startswith(("hidden", "logits"))}
    print("largest over all calls: " + ", ".join(f"{c} {v:.3g}" for c, v in worst.items()))
    print("eager sampler against compiled sampler (the test's comparison):")
    print("\n".join(compare_results(eager, compiled)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
