import json

import pytest
import torch
from safetensors.torch import save_file

from litere.config import ModelConfig
from litere.weights import CheckpointError, load_model, save_model

from model_utils import hf_twin, positions_for, random_model, small_config

IDS = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(0))


def logits_of(model):
    with torch.no_grad():
        if hasattr(model, "token_logprobs"):
            return model.logits(model(IDS, positions_for(IDS)))
        return model(IDS).logits


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("shard", ["single", "sharded"])
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, tied, shard):
    hf = hf_twin(random_model(small_config(tie_word_embeddings=tied)))
    hf.save_pretrained(tmp_path, max_shard_size="60KB" if shard == "sharded" else "1GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == (shard == "sharded")
    model = load_model(tmp_path)
    assert model.lm_head.weight.device.type == "cpu" and model.config.tie_word_embeddings == tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    torch.testing.assert_close(logits_of(model), logits_of(hf), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_litere_checkpoint_loads_in_transformers(tmp_path, tied):
    from transformers import Qwen3ForCausalLM

    model = random_model(small_config(tie_word_embeddings=tied))
    save_model(model, tmp_path, max_shard_bytes=50_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and ("lm_head.weight" in index["weight_map"]) != tied
    hf = Qwen3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(logits_of(hf), logits_of(model), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_of(load_model(tmp_path)), logits_of(model), atol=0, rtol=0)


def test_load_casts_to_dtype_and_saves_single_file(tmp_path):
    model = random_model(small_config())
    save_model(model, tmp_path, dtype=torch.bfloat16)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "model.safetensors.index.json").exists()
    assert ModelConfig.from_json(tmp_path).torch_dtype == "bfloat16"
    loaded = load_model(tmp_path)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert load_model(tmp_path, dtype=torch.float32).model.norm.weight.dtype == torch.float32


def test_tokenizer_files_are_copied(tmp_path):
    src = tmp_path / "tok"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    save_model(random_model(small_config()), tmp_path / "out", tokenizer_dir=src)
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"


@pytest.fixture
def sharded(tmp_path):
    hf_twin(random_model(small_config(tie_word_embeddings=False))).save_pretrained(tmp_path, max_shard_size="60KB")
    return tmp_path


def test_missing_shard_names_file_and_keys(sharded):
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(sharded)
    assert victim.name in str(e.value) and "model." in str(e.value)


def test_wrong_shape_and_missing_and_unexpected_keys_in_one_error(tmp_path):
    model = random_model(small_config(tie_word_embeddings=False))
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    del tensors["model.norm.weight"]
    tensors["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model.config.to_json(tmp_path / "config.json")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    text = str(e.value)
    assert "model.layers.0.mlp.up_proj.weight in model.safetensors has shape [3, 3]" in text
    assert "missing model.norm.weight" in text and "unexpected model.layers.0.extra.weight" in text


def test_config_weights_mismatch_names_the_key(tmp_path):
    save_model(random_model(small_config()), tmp_path)
    bigger = small_config(intermediate_size=96).to_hf_dict()
    (tmp_path / "config.json").write_text(json.dumps(bigger))
    with pytest.raises(CheckpointError, match=r"mlp.gate_proj.weight in model.safetensors has shape \[128, 64\]"):
        load_model(tmp_path)
    missing_layer = small_config(num_hidden_layers=3).to_hf_dict()
    (tmp_path / "config.json").write_text(json.dumps(missing_layer))
    with pytest.raises(CheckpointError, match="missing model.layers.2.self_attn.q_proj.weight"):
        load_model(tmp_path)


def test_truncated_file_is_named(tmp_path):
    save_model(random_model(small_config()), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)


def test_tied_checkpoint_with_head_copy(tmp_path):
    model = random_model(small_config(tie_word_embeddings=True))
    tensors = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model.config.to_json(tmp_path / "config.json")
    torch.testing.assert_close(logits_of(load_model(tmp_path)), logits_of(model), atol=0, rtol=0)
    tensors["lm_head.weight"] += 1
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        load_model(tmp_path)


def test_no_checkpoint_and_offline_hub_id(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        ModelConfig.preset("tiny").to_json(tmp_path / "config.json") or load_model(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="huggingface-cli download Qwen/Qwen3-4B-Thinking-2507 --local-dir"):
        load_model("Qwen/Qwen3-4B-Thinking-2507")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nope")
