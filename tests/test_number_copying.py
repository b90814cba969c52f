"""benchmarks/number_copying.py: the attention it records is the model's own; copy sources and turns found right."""
import sys
from pathlib import Path

import numpy as np
import torch

from model_utils import random_model, small_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import number_copying  # noqa: E402


def test_recorded_attention_leaves_the_forward_unchanged_and_keeps_each_documents_weights():
    model = random_model(small_config()).eval()
    ids = torch.randint(0, model.config.vocab_size, (11,))
    positions = torch.cat([torch.arange(7), torch.arange(4)])
    with torch.no_grad():
        plain = model(ids, positions, seqlens=[7, 4])
        weights = []
        with number_copying.recorded_attention(weights):
            recorded = model(ids, positions, seqlens=[7, 4])
        after = model(ids, positions, seqlens=[7, 4])
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after, plain)  # the model's kernel is back
    assert len(weights) == model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    for layer in weights:
        assert [tuple(doc.shape) for doc in layer] == [(heads, 7, 7), (heads, 4, 4)]
        for doc in layer:
            torch.testing.assert_close(doc.sum(-1), torch.ones(doc.shape[:2]))
            assert not doc.triu(1).any()  # causal


def test_copy_sources_are_the_tokens_after_earlier_spellings_of_the_current_pair_in_its_own_document():
    from litere.train import sft
    ids = np.array([7, 5, 2, 3, 5, 2, 9, 5, 2, 3, 5, 2])  # two documents: [7 5 2 3 5 2 9] and [5 2 3 5 2]
    pairs = sft.token_pairs(ids[:-1], ids[1:])
    # position 4 (input 5, target 2): 5 -> 2 was spelt at positions 1-2, so the 2 to copy sits at 2; position 10 in
    # the second document (from 7): at 8, never the first document's; a document's first pair has no source
    assert number_copying.copy_sources(pairs, 0, 4).tolist() == [2]
    assert number_copying.copy_sources(pairs, 7, 10).tolist() == [8]
    assert number_copying.copy_sources(pairs, 7, 7).tolist() == []
    assert number_copying.copy_sources(pairs, 0, 1).tolist() == []


def test_previous_token_weight_sums_each_heads_weight_on_the_token_before_each_query():
    doc = torch.zeros(2, 3, 3)
    doc[0] = torch.tensor([[1.0, 0, 0], [0.25, 0.75, 0], [0.5, 0.25, 0.25]])  # on the previous token: 0.25, 0.25
    doc[1] = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])           # a previous-token head: 1, 1
    assert number_copying.previous_token_weight(doc).tolist() == [0.5, 2.0]
