"""ModelConfig: the single source of architecture truth, read from and written to Hugging Face config.json."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConfigError(ValueError):
    """A config field is missing, inconsistent or unsupported; the message names the field."""


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rms_norm_eps: float = 1e-6
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if self.torch_dtype not in _DTYPES:
            raise ConfigError(f"dtype {self.torch_dtype!r} is not one of {sorted(_DTYPES)}")

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.torch_dtype]

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads) + 2 * d
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * layer + h + head

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    # --- Hugging Face config.json ---------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> ModelConfig:
        try:
            return cls(**_fields_from_hf(d))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict:
        """Both the new (`rope_parameters`, `dtype`) and the old (`rope_theta`, `torch_dtype`) spellings."""
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_sliding_window": False,
            "sliding_window": None,
            "torch_dtype": self.torch_dtype,
            "dtype": self.torch_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "use_cache": True,
        }

    @classmethod
    def from_json(cls, path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, source=str(path))

    def to_json(self, path):
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")


def _fields_from_hf(d: dict) -> dict:
    arch = d.get("architectures") or ["Qwen3ForCausalLM"]
    if "Qwen3ForCausalLM" not in arch or d.get("model_type", "qwen3") != "qwen3":
        raise ConfigError(f"architectures={arch} model_type={d.get('model_type')!r}: only Qwen3ForCausalLM "
                          "(model_type 'qwen3') is supported")
    if d.get("attention_bias", False):
        raise ConfigError("attention_bias=true is not supported (Qwen3 checkpoints have none)")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
    if d.get("use_sliding_window", False):
        raise ConfigError("use_sliding_window=true is not supported")
    for key in ("rope_parameters", "rope_scaling"):
        params = d.get(key) or {}
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise ConfigError(f"{key}.rope_type={kind!r} is not supported (only 'default' rotary)")
    theta = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta"))
    if theta is None:
        raise ConfigError("missing rope_theta (neither rope_parameters.rope_theta nor rope_theta)")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in d]
    if missing:
        raise ConfigError(f"missing field(s) {', '.join(missing)}")
    heads = d["num_attention_heads"]
    return dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=d.get("num_key_value_heads", heads),
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        rope_theta=float(theta), max_position_embeddings=d.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        torch_dtype=str(d.get("dtype") or d.get("torch_dtype") or "bfloat16").removeprefix("torch."),
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
    )


PRESETS: dict[str, dict] = {
    # Qwen3-4B-Thinking-2507 (docs/protocol.md section 1): 4,022,468,096 parameters.
    "qwen3-4b": dict(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=5_000_000.0,
        max_position_embeddings=262144, tie_word_embeddings=True, rms_norm_eps=1e-6, torch_dtype="bfloat16",
        bos_token_id=151643, eos_token_id=151645,
    ),
    "qwen3-0.6b": dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1_000_000.0,
        max_position_embeddings=40960, tie_word_embeddings=True, rms_norm_eps=1e-6, torch_dtype="bfloat16",
        bos_token_id=151643, eos_token_id=151645,
    ),
    # The demo scale: 4 layers, width 256, GQA 2:1, head_dim 64.
    "tiny": dict(
        vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1_000_000.0,
        max_position_embeddings=65536, tie_word_embeddings=True, rms_norm_eps=1e-6, torch_dtype="float32",
    ),
}
