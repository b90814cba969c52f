"""The KV-cached sampler: token ids in, token ids with per-token logprobs out.

engine.py: the `Sampler` API and the forward/sampling side of a step; scheduler.py: sequences, admission, blocks,
preemption and prompt sharing; kv_cache.py: the paged cache; sampling.py: the next-token choice; decode_graph.py: the
compiled decode step.
"""
from .engine import Output, Sampler
from .sampling import SamplingParams

__all__ = ["Output", "Sampler", "SamplingParams"]
