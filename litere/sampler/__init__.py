"""The KV-cached sampler: token ids in, token ids with per-token logprobs out (see engine.py)."""
from .engine import Output, Sampler
from .sampling import SamplingParams

__all__ = ["Output", "Sampler", "SamplingParams"]
