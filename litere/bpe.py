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
# The split for `whole_names`: a capitalised word never takes the space or punctuation before it, and punctuation never
# starts a word, so a name ("Frond Hok") is spelt in the same tokens after a space, a quote or `<answer>`, and so is a
# page address after its first letter ("/frond-hok" in "w/frond-hok"). Lower-case words keep their leading space,
# which keeps the text short.
WHOLE_NAMES_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)| ?\p{Ll}+|\p{Lu}\p{L}*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                             r"\s*[\r\n]+|\s+(?!\S)|\s+")


DIGIT_PAIRS = [f"{i:02d}" for i in range(100)]


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None,
                    digit_pairs: bool = False, whole_names: bool = False) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (special tokens included) on `texts`; save it to `out_dir`.

    With `digit_pairs`, the 100 two-digit strings are tokens of their own (taken out of the text before the BPE,
    left to right: 250850 -> 25 08 50) instead of numbers being spelt digit by digit. A small model copies a number
    from its context far more reliably as a few tokens of a hundred kinds than as six tokens of ten kinds.

    With `whole_names`, text is split by WHOLE_NAMES_SPLIT_PATTERN instead of Qwen's split. Qwen's split spells
    " Frond" (after a space) and "Frond" (after `"` or `>`) in different tokens, so copying a name from a page into a
    search query or an answer is a mapping between token pairs that a small model must learn pair by pair; with
    `whole_names` it is a plain copy. The text is about 10% longer in tokens on the demo's data.
    """
    special = list(SPECIAL_TOKENS.values())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    reserved = len(alphabet) + len(special) + (len(DIGIT_PAIRS) if digit_pairs else 0)
    if vocab_size < reserved:
        raise ValueError(f"vocab_size={vocab_size} is below the {reserved} bytes, special tokens"
                         + (" and digit pairs" if digit_pairs else ""))
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WHOLE_NAMES_SPLIT_PATTERN if whole_names else SPLIT_PATTERN), behavior="isolated"),
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
