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


DIGIT_PAIRS = [f"{i:02d}" for i in range(100)]


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None,
                    digit_pairs: bool = False) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (special tokens included) on `texts`; save it to `out_dir`.

    With `digit_pairs`, the 100 two-digit strings are tokens of their own (taken out of the text before the BPE,
    left to right: 250850 -> 25 08 50) instead of numbers being spelt digit by digit. A small model copies a number
    from its context far more reliably as a few tokens of a hundred kinds than as six tokens of ten kinds.
    """
    special = list(SPECIAL_TOKENS.values())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    reserved = len(alphabet) + len(special) + (len(DIGIT_PAIRS) if digit_pairs else 0)
    if vocab_size < reserved:
        raise ValueError(f"vocab_size={vocab_size} is below the {reserved} bytes, special tokens"
                         + (" and digit pairs" if digit_pairs else ""))
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    bpe_size = vocab_size - (len(DIGIT_PAIRS) if digit_pairs else 0)
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, special_tokens=special, initial_alphabet=alphabet,
                                  show_progress=False)
    hf.train_from_iterator(texts, trainer=trainer)
    if digit_pairs:
        hf.add_tokens(DIGIT_PAIRS)
    tokenizer = Tokenizer(hf, source="trained BPE")
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer
