"""Does a demo model copy numbers? The held-out loss split by what predicts a target, and the digit tokens' embeddings.

For each model directory (an SFT export of `python -m litere.demo` or `benchmarks/demo_variants.py`), on the first
`--eval-limit` held-out conversations of the demo's SFT data (the probe the trainer logs), the token-mean loss of the
supervised targets that are:
- the first digit pair of a number (what the context must say: the page's number, found by its attribute),
- a later digit pair of the same number (the pair after the one just copied: the page's next token),
- copy targets that are not digits (a token pair first seen earlier in the conversation and never in training:
  the pieces of a new name, litere.train.sft.copy_targets),
- everything else;
and the mean cosine similarity between the input embeddings of the digit-pair tokens, and between those of the
other tokens (the demo model ties its input and output embeddings).

    python benchmarks/number_copying.py runs/demo/sft/final runs/variants/seed2/sft/final --data runs/demo/data

The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere.tokenizer import Tokenizer  # noqa: E402
from litere.train import sft  # noqa: E402
from litere.train.sft_data import DataPosition  # noqa: E402
from litere.weights import load_model  # noqa: E402

CLASSES = ("first digit pair", "later digit pair", "name copy", "other")


class _Quiet:
    def info(self, message: str):
        pass


def held_out_split(model_dir: Path, data: Path, eval_limit: int) -> dict:
    tokenizer = Tokenizer.from_dir(model_dir)
    cfg = sft.SFTConfig(train_files=[str(data / "train.jsonl")], eval_files=[str(data / "eval.jsonl")],
                        eval_limit=eval_limit, cutoff_len=4096, overlong="drop", pack_tokens=4096)
    _, held_out = sft._load_data(cfg, tokenizer, _Quiet())
    model = load_model(model_dir).eval()
    sums = {name: [0.0, 0] for name in CLASSES}
    batch = held_out.planner.batch(DataPosition(), 0, 1)
    with torch.no_grad():
        for micro in batch.micro_batches:
            supervised = micro.weights.nonzero().squeeze(1)
            copy = sft.copy_targets(micro, held_out.known_pairs)[supervised].numpy()
            digits = held_out.numbers[micro.targets[supervised].numpy()]
            after_digits = held_out.numbers[micro.input_ids[supervised].numpy()]
            nll, _ = sft.token_nll(model, micro, torch.device("cpu"), None)
            nll = nll.float().numpy()
            masks = (digits & ~after_digits, digits & after_digits, copy & ~digits, ~copy & ~digits)
            for name, mask in zip(CLASSES, masks):
                sums[name][0] += float(nll[mask].sum())
                sums[name][1] += int(mask.sum())
    embeddings = model.model.embed_tokens.weight.detach().float()
    return {"model": str(model_dir),
            "loss": {name: s / n if n else None for name, (s, n) in sums.items()},
            "targets": {name: n for name, (_, n) in sums.items()},
            "digit_embedding_cosine": mean_cosine(embeddings[torch.from_numpy(held_out.numbers)]),
            "other_embedding_cosine": mean_cosine(embeddings[torch.from_numpy(~held_out.numbers)])}


def mean_cosine(vectors: torch.Tensor) -> float:
    """The mean cosine similarity over the distinct pairs of rows."""
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit.T
    n = len(vectors)
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="model directories (Hugging Face layout)")
    parser.add_argument("--data", type=Path, required=True, help="the demo's SFT data (train.jsonl, eval.jsonl)")
    parser.add_argument("--eval-limit", type=int, default=64, help="held-out conversations (the trainer's probe)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [held_out_split(m, args.data, args.eval_limit) for m in args.models]
    print("| model | " + " | ".join(f"loss: {c}" for c in CLASSES) + " | cosine: digit embeddings | cosine: others |")
    print("|---|" + "---:|" * (len(CLASSES) + 2))
    for r in rows:
        losses = " | ".join("—" if r["loss"][c] is None else f"{r['loss'][c]:.3f}" for c in CLASSES)
        print(f"| {r['model']} | {losses} | {r['digit_embedding_cosine']:.3f} | {r['other_embedding_cosine']:.3f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
