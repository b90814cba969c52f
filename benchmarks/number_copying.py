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

With --attention, also where the copying heads look: for each digit pair and each name piece that copies (a
target t after input token x, with the pair x t spelt earlier in the conversation), the attention weight that
each head puts, at x, on the earlier spellings' t (the token an induction head copies); the mean over those targets,
per layer and head, and for each layer its head that puts the most there; and the mean weight each head puts on
the token just before the one it reads (row "previous token", every position: an induction head matches a key that
holds its position's previous token, which an earlier layer must fetch).

With --turns, the held-out loss of each assistant turn instead (nats summed over the turn's targets, the mean over
the conversations with that many turns; `--turns 5`: the 2-hop teacher trajectories, whose third turn begins the
second hop and names the relation it asks for).

    python benchmarks/number_copying.py runs/demo/sft/final runs/variants/seed2/sft/final --data runs/demo/data
    python benchmarks/number_copying.py runs/demo/sft/pre_decay --data runs/demo/data --attention --eval-limit 16
    python benchmarks/number_copying.py runs/demo/sft/final --data runs/demo/data --turns 5 --eval-limit 300

The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import model as model_module  # noqa: E402
from litere.tokenizer import Tokenizer  # noqa: E402
from litere.train import sft  # noqa: E402
from litere.train.sft_data import DataPosition  # noqa: E402
from litere.weights import load_model  # noqa: E402

CLASSES = ("first digit pair", "later digit pair", "name copy", "other")


class _Quiet:
    def info(self, message: str):
        pass


def load_probe(model_dir: Path, data: Path, eval_limit: int):
    """The model and the held-out probe's step (the trainer's: the first `eval_limit` held-out conversations)."""
    tokenizer = Tokenizer.from_dir(model_dir)
    cfg = sft.SFTConfig(train_files=[str(data / "train.jsonl")], eval_files=[str(data / "eval.jsonl")],
                        eval_limit=eval_limit, cutoff_len=4096, overlong="drop", pack_tokens=4096)
    _, held_out = sft._load_data(cfg, tokenizer, _Quiet())
    return load_model(model_dir).eval(), held_out, held_out.planner.batch(DataPosition(), 0, 1)


def target_classes(micro, held_out) -> tuple[np.ndarray, ...]:
    """One flag per target of a micro-batch for each of CLASSES."""
    copy = sft.copy_targets(micro, held_out.known_pairs).numpy()
    digits = held_out.numbers[micro.targets.numpy()]
    after_digits = held_out.numbers[micro.input_ids.numpy()]
    return digits & ~after_digits, digits & after_digits, copy & ~digits, ~copy & ~digits


def copy_sources(pairs: np.ndarray, start: int, i: int) -> np.ndarray:
    """Positions j in [start + 1, i) of a packed stream whose preceding pair (token j-1, token j) is the pair
    (input, target) of position i: where an induction head at i finds the token to copy. `pairs` holds
    sft.token_pairs of the stream, so pairs[j - 1] is that preceding pair."""
    return np.nonzero(pairs[start:i - 1] == pairs[i])[0] + start + 1


def held_out_split(model_dir: Path, data: Path, eval_limit: int) -> dict:
    model, held_out, batch = load_probe(model_dir, data, eval_limit)
    sums = {name: [0.0, 0] for name in CLASSES}
    with torch.no_grad():
        for micro in batch.micro_batches:
            supervised = micro.weights.nonzero().squeeze(1)
            masks = [m[supervised.numpy()] for m in target_classes(micro, held_out)]
            nll, _ = sft.token_nll(model, micro, torch.device("cpu"), None)
            nll = nll.float().numpy()
            for name, mask in zip(CLASSES, masks):
                sums[name][0] += float(nll[mask].sum())
                sums[name][1] += int(mask.sum())
    embeddings = model.model.embed_tokens.weight.detach().float()
    return {"model": str(model_dir),
            "loss": {name: s / n if n else None for name, (s, n) in sums.items()},
            "targets": {name: n for name, (_, n) in sums.items()},
            "digit_embedding_cosine": mean_cosine(embeddings[torch.from_numpy(held_out.numbers)]),
            "other_embedding_cosine": mean_cosine(embeddings[torch.from_numpy(~held_out.numbers)])}


def turn_losses(model_dir: Path, data: Path, eval_limit: int, turns: int) -> dict:
    """Nats per assistant turn (summed over its targets), averaged over the held-out conversations of `turns` turns."""
    model, _, batch = load_probe(model_dir, data, eval_limit)
    sums, conversations = np.zeros(turns), 0
    with torch.no_grad():
        for micro in batch.micro_batches:
            supervised = micro.weights.nonzero().squeeze(1).numpy()
            nll = sft.token_nll(model, micro, torch.device("cpu"), None)[0].float().numpy()
            for document in sft.assistant_turns(supervised, micro.seqlens):
                if len(document) == turns:
                    sums += [nll[turn].sum() for turn in document]
                    conversations += 1
    return {"model": str(model_dir), "conversations": conversations,
            "nats_per_turn": (sums / conversations).tolist() if conversations else None}


@contextlib.contextmanager
def recorded_attention(weights: list):
    """The model's packed attention, computed explicitly: each layer appends its weights per document, (heads,
    queries, keys)."""
    def attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1).float(), v.repeat_interleave(group, 1).float()
        bounds, out, layer = cu_seqlens.tolist(), torch.empty_like(q), []
        for a, b in zip(bounds[:-1], bounds[1:]):
            scores = torch.einsum("qhd,khd->hqk", q[a:b].float(), k[a:b]) / q.shape[-1] ** 0.5
            causal = torch.ones(b - a, b - a, dtype=torch.bool).triu(1)
            layer.append(F.softmax(scores.masked_fill(causal, float("-inf")), -1))
            out[a:b] = torch.einsum("hqk,khd->qhd", layer[-1], v[a:b]).to(q.dtype)
        weights.append(layer)
        return out
    real = model_module.kernels.attention
    model_module.kernels.attention = attention
    try:
        yield
    finally:
        model_module.kernels.attention = real


ATTENTION_CLASSES = CLASSES[:3]  # the copying ones
PREVIOUS = "previous token"


def previous_token_weight(doc: torch.Tensor) -> np.ndarray:
    """A document's attention weights (heads, queries, keys): each head's summed weight on the token just before
    each query (the queries after the first)."""
    return doc.diagonal(-1, dim1=1, dim2=2).sum(-1).numpy()


def copy_attention(model_dir: Path, data: Path, eval_limit: int) -> dict:
    """Mean attention weight per (layer, head) on the earlier spellings of what a copying target copies, and on the
    previous token (every position: what builds the key an induction head matches)."""
    model, held_out, batch = load_probe(model_dir, data, eval_limit)
    shape = (model.config.num_hidden_layers, model.config.num_attention_heads)
    sums = {name: [np.zeros(shape), 0] for name in ATTENTION_CLASSES}
    previous = [np.zeros(shape), 0]
    with torch.no_grad():
        for micro in batch.micro_batches:
            weights = []
            with recorded_attention(weights):
                model(micro.input_ids, micro.positions, seqlens=micro.seqlens)
            for doc, length in enumerate(micro.seqlens):
                previous[0] += np.array([previous_token_weight(layer[doc]) for layer in weights])
                previous[1] += length - 1
            pairs = sft.token_pairs(micro.input_ids.numpy(), micro.targets.numpy())
            starts = np.cumsum([0, *micro.seqlens])
            supervised = micro.weights.numpy() > 0
            for name, mask in zip(ATTENTION_CLASSES, target_classes(micro, held_out)):
                for i in np.nonzero(mask & supervised)[0]:
                    doc = int(np.searchsorted(starts, i, side="right")) - 1
                    a = int(starts[doc])
                    sources = copy_sources(pairs, a, i) - a
                    if len(sources):
                        sums[name][0] += np.array([layer[doc][:, i - a, sources].sum(-1).numpy() for layer in weights])
                        sums[name][1] += 1
    sums[PREVIOUS] = previous
    return {"model": str(model_dir),
            "attention": {name: (total / n).round(3).tolist() if n else None for name, (total, n) in sums.items()},
            "targets": {name: n for name, (_, n) in sums.items()}}


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
    parser.add_argument("--attention", action="store_true", help="also where the copying heads look")
    parser.add_argument("--turns", type=int, help="the loss per assistant turn of the conversations of this many")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.turns:
        rows = [turn_losses(m, args.data, args.eval_limit, args.turns) for m in args.models]
        print("| model | conversations | " + " | ".join(f"turn {i + 1}" for i in range(args.turns)) + " |")
        print("|---|" + "---:|" * (args.turns + 1))
        for r in rows:
            cells = " | ".join(f"{v:.2f}" for v in r["nats_per_turn"] or [])
            print(f"| {r['model']} | {r['conversations']} | {cells} |")
        print(json.dumps(rows))
        return 0
    if args.attention:
        return print_attention([copy_attention(m, args.data, args.eval_limit) for m in args.models])
    rows = [held_out_split(m, args.data, args.eval_limit) for m in args.models]
    print("| model | " + " | ".join(f"loss: {c}" for c in CLASSES) + " | cosine: digit embeddings | cosine: others |")
    print("|---|" + "---:|" * (len(CLASSES) + 2))
    for r in rows:
        losses = " | ".join("—" if r["loss"][c] is None else f"{r['loss'][c]:.3f}" for c in CLASSES)
        print(f"| {r['model']} | {losses} | {r['digit_embedding_cosine']:.3f} | {r['other_embedding_cosine']:.3f} |")
    print(json.dumps(rows))
    return 0


def print_attention(rows: list[dict]) -> int:
    layers = len(next(a for r in rows for a in r["attention"].values() if a))
    print("| model | targets | " + " | ".join(f"layer {i}: best head (weight)" for i in range(layers)) + " |")
    print("|---|---|" + "---:|" * layers)
    for r in rows:
        for name, per_layer in r["attention"].items():
            if per_layer is None:
                continue
            best = " | ".join(f"{int(np.argmax(h))} ({max(h):.2f})" for h in per_layer)
            print(f"| {r['model']} | {name} ({r['targets'][name]}) | {best} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
