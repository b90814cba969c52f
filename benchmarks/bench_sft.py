"""SFT training throughput on the CPU: litere's trainer (packed documents) vs transformers' Qwen3ForCausalLM (padded).

Both sides train the same randomly initialised weights on the same batches (lengths uniform in [min_len, max_len],
assistant-token masks), with AdamW and gradient clipping. litere packs a batch into one stream (sft.micro_step and
sft.optimizer_step, the trainer's own functions); transformers pads it to its longest document. The figure of merit is
effective tokens/s: real (non-padding) tokens per second. Steps alternate between the two sides so that load from
other processes hits both alike; the table shows medians over steps, and also the speedup in tokens per second of
process CPU time, which is steadier on a shared machine (with one thread it is the cleanest measure).

    python benchmarks/bench_sft.py            # tiny (~4M) and mid (~29M), fp32 and bf16 autocast
    python benchmarks/bench_sft.py --quick    # fewer, shorter steps
    python benchmarks/bench_sft.py --threads 1 --configs tiny --dtypes fp32

The last line is JSON.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litere.train import sft  # noqa: E402
from litere.config import ModelConfig  # noqa: E402
from litere.train.sft_data import SFTDataset, pack_documents  # noqa: E402
from litere.model import Qwen3  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64),
    "mid": dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, head_dim=64),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def model_config(name: str) -> ModelConfig:
    return ModelConfig(**CONFIGS[name], rope_theta=1e6, max_position_embeddings=4096, tie_word_embeddings=True,
                       torch_dtype="float32")


def make_batches(config: ModelConfig, n_batches: int, batch_size: int, min_len: int, max_len: int, seed: int):
    """Token documents with assistant spans (about half of the tokens supervised), grouped into batches."""
    rng = np.random.default_rng(seed)
    tokens, labels, lengths = [], [], []
    for _ in range(n_batches * batch_size):
        n = int(rng.integers(min_len, max_len + 1))
        tokens.append(rng.integers(0, config.vocab_size, n, dtype=np.int32))
        mask = np.zeros(n, dtype=np.uint8)
        start = int(rng.integers(16, 48))
        while start < n:  # prompt / assistant / tool-response turns of random length
            span = int(rng.integers(16, 96))
            mask[start:start + span] = 1
            start += span + int(rng.integers(16, 96))
        labels.append(mask)
        lengths.append(n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    dataset = SFTDataset(np.concatenate(tokens), np.concatenate(labels), offsets, [""] * len(lengths))
    return dataset, [list(range(b * batch_size, (b + 1) * batch_size)) for b in range(n_batches)]


class LitereSide:
    def __init__(self, model: Qwen3, dataset: SFTDataset, autocast_dtype):
        self.model, self.dataset, self.autocast_dtype = model.train(), dataset, autocast_dtype
        cfg = sft.SFTConfig(lr=1e-4, warmup_ratio=0.0, weight_decay=0.0)
        self.optimizer, self.scheduler = sft.build_optimizer(model, cfg, sft.lr_schedule(cfg, 10_000))

    def step(self, docs) -> float:
        batch = pack_documents(self.dataset, docs)
        nll = sft.micro_step(self.model, batch, 1.0 / float(batch.weights.sum()), torch.device("cpu"),
                             self.autocast_dtype)
        sft.optimizer_step(self.model, self.optimizer, self.scheduler, grad_clip=1.0)
        return float(nll) / float(batch.weights.sum())


class TransformersSide:
    def __init__(self, model: Qwen3, dataset: SFTDataset, autocast_dtype):
        from transformers import Qwen3Config, Qwen3ForCausalLM

        hf = Qwen3ForCausalLM(Qwen3Config(**model.config.to_hf_dict()))
        hf.load_state_dict(model.state_dict())
        self.model, self.dataset, self.autocast_dtype = hf.train(), dataset, autocast_dtype
        self.optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.0)

    def step(self, docs) -> float:
        longest = max(int(self.dataset.lengths[d]) for d in docs)
        ids = torch.zeros(len(docs), longest, dtype=torch.long)
        attention = torch.zeros(len(docs), longest, dtype=torch.long)
        labels = torch.full((len(docs), longest), -100, dtype=torch.long)
        for row, d in enumerate(docs):
            tokens, mask = self.dataset.document(d)
            n = len(tokens)
            ids[row, :n] = torch.from_numpy(tokens.astype(np.int64))
            attention[row, :n] = 1
            labels[row, :n] = torch.where(torch.from_numpy(mask.astype(bool)), ids[row, :n], -100)
        context = torch.autocast("cpu", dtype=self.autocast_dtype) if self.autocast_dtype else torch.enable_grad()
        with context:
            loss = self.model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def run_case(name: str, dtype: str, args) -> dict:
    config = model_config(name)
    torch.manual_seed(args.seed)
    model = Qwen3(config)
    model.init_weights(std=0.02, generator=torch.Generator().manual_seed(args.seed))
    n_steps = args.warmup + args.steps
    dataset, batches = make_batches(config, n_steps, args.batch, args.min_len, args.max_len, args.seed)
    sides = {"litere": LitereSide(model, dataset, DTYPES[dtype]),
             "transformers": TransformersSide(model, dataset, DTYPES[dtype])}  # copies the weights before training
    rates = {side: [] for side in sides}
    cpu_rates = {side: [] for side in sides}
    first_losses = {}
    for i, docs in enumerate(batches):
        real = sum(int(dataset.lengths[d]) - 1 for d in docs)  # input tokens that are not padding
        for side, runner in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            loss = runner.step(docs)
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
            first_losses.setdefault(side, loss)
            if i >= args.warmup:
                rates[side].append(real / seconds)
                cpu_rates[side].append(real / cpu_seconds)
    lengths = dataset.lengths
    padded = sum(len(docs) * int(lengths[docs].max()) for docs in map(np.array, batches))
    litere, hf = statistics.median(rates["litere"]), statistics.median(rates["transformers"])
    cpu_ratio = statistics.median(cpu_rates["litere"]) / statistics.median(cpu_rates["transformers"])
    return {"config": name, "params_m": round(config.num_parameters() / 1e6, 2), "dtype": dtype,
            "litere_tok_s": round(litere), "transformers_tok_s": round(hf), "speedup": round(litere / hf, 2),
            "speedup_cpu_time": round(cpu_ratio, 2), "real_token_fraction": round(int(lengths.sum()) / padded, 3),
            "first_loss_litere": round(first_losses["litere"], 4),
            "first_loss_transformers": round(first_losses["transformers"], 4),
            "litere_spread": [round(min(rates["litere"])), round(max(rates["litere"]))],
            "transformers_spread": [round(min(rates["transformers"])), round(max(rates["transformers"]))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 timed steps of documents up to 512 tokens")
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-len", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.max_len = 3, 512
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    load = os.getloadavg()[0]
    print(f"# SFT throughput, CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"batches of {args.batch}, lengths uniform in [{args.min_len}, {args.max_len}], {args.steps} timed steps "
          f"after {args.warmup} warm-up; load average at start {load:.2f}")
    results = []
    header = (f"| {'config':6} | {'params':>7} | {'dtype':5} | {'litere tok/s':>12} | {'transformers tok/s':>18} | "
              f"{'speedup':>7} | {'speedup (CPU time)':>18} | {'real tokens':>11} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in args.configs.split(","):
        for dtype in args.dtypes.split(","):
            r = run_case(name, dtype, args)
            results.append(r)
            print(f"| {name:6} | {r['params_m']:6.1f}M | {dtype:5} | {r['litere_tok_s']:12,} | "
                  f"{r['transformers_tok_s']:18,} | {r['speedup']:6.2f}x | {r['speedup_cpu_time']:17.2f}x | "
                  f"{r['real_token_fraction']:10.0%} |",
                  flush=True)
    print(f"# effective (non-padding) tokens per wall-clock second, medians over steps; the CPU-time speedup compares "
          f"tokens per second of process CPU time, which load from other processes disturbs less; load average at "
          f"end {os.getloadavg()[0]:.2f}")
    print(json.dumps({"benchmark": "sft_throughput", "device": "cpu", "threads": torch.get_num_threads(),
                      "batch": args.batch, "min_len": args.min_len, "max_len": args.max_len, "steps": args.steps,
                      "load_average_start": round(load, 2), "results": results,
                      "min_speedup": min(r["speedup"] for r in results)}))


if __name__ == "__main__":
    main()
