"""A small byte-level BPE tokenizer with the Qwen3 special tokens, trained with `tokenizers` on your own text."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .tokenizer import SPECIAL_TOKENS, Tokenizer

# Qwen2/Qwen3's pre-tokenisation split: words with a leading non-letter, single digits, punctuation runs, newlines.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (special tokens included) on `texts`; save it to `out_dir`."""
    special = list(SPECIAL_TOKENS.values())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special):
        raise ValueError(f"vocab_size={vocab_size} is below the {len(alphabet)} bytes + {len(special)} special tokens")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet,
                                  show_progress=False)
    hf.train_from_iterator(texts, trainer=trainer)
    tokenizer = Tokenizer(hf, source="trained BPE")
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer
