import json

import pytest

from litere.config import ConfigError, ModelConfig


def test_qwen3_4b_preset_matches_protocol():
    c = ModelConfig.preset("qwen3-4b")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        36, 2560, 32, 8, 128)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta, c.max_position_embeddings) == (
        9728, 151936, 5_000_000.0, 262144)
    assert c.tie_word_embeddings and c.rms_norm_eps == 1e-6
    assert c.num_parameters() == 4_022_468_096


@pytest.mark.parametrize("name", ["qwen3-4b", "qwen3-0.6b", "tiny"])
def test_hf_dict_round_trip(name):
    c = ModelConfig.preset(name)
    assert ModelConfig.from_hf_dict(c.to_hf_dict()) == c


def test_reads_old_and_new_key_spellings(tmp_path):
    new = ModelConfig.preset("tiny").to_hf_dict()
    old = {k: v for k, v in new.items() if k not in ("rope_parameters", "dtype")}
    old["rope_theta"], old["torch_dtype"] = 1234.0, "bfloat16"
    new.pop("rope_theta"), new.pop("torch_dtype")
    new["rope_parameters"], new["dtype"] = {"rope_type": "default", "rope_theta": 1234.0}, "bfloat16"
    for d in (old, new):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(d))
        c = ModelConfig.from_json(tmp_path)
        assert c.rope_theta == 1234.0 and c.torch_dtype == "bfloat16"


@pytest.mark.parametrize("change, field", [
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1.0}}, "rope_parameters.rope_type"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "architectures"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"dtype": "int8", "torch_dtype": "int8"}, "dtype"),
    ({"hidden_size": -4}, "hidden_size"),
])
def test_bad_fields_are_named(tmp_path, change, field):
    d = {**ModelConfig.preset("tiny").to_hf_dict(), **change}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_json(tmp_path / "config.json")
    assert field in str(e.value) and "config.json" in str(e.value)


def test_missing_fields_and_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        ModelConfig.from_json(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json(tmp_path)
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig.from_hf_dict({"rope_theta": 1.0, "hidden_size": 8})
    with pytest.raises(ConfigError, match="unknown preset"):
        ModelConfig.preset("qwen3-99b")
