"""Hugging Face checkpoint I/O: config.json + safetensors (single file or sharded with an index) + tokenizer files.

Loading builds the model on the meta device and assigns each tensor as it is read, so the weights exist once.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig
from .model import Qwen3

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "generation_config.json")
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read as asked; the message names the files and keys at fault."""


def resolve_checkpoint(path_or_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local checkpoint directory, or a Hugging Face Hub id downloaded (or found in the local cache)."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    name = str(path_or_id)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name}: not a checkpoint directory (expected config.json and safetensors inside)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=_WEIGHT_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo: all end in the same advice
        raise CheckpointError(
            f"{name}: not a local directory, and the Hugging Face Hub could not provide it "
            f"({type(e).__name__}: {e}). On a machine with network access run "
            f"`huggingface-cli download {name} --local-dir DIR`, copy DIR here and pass its path instead."
        ) from None


def _key_files(ckpt: Path) -> dict[str, Path]:
    """Every tensor key of the checkpoint and the file holding it."""
    index = ckpt / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        absent: dict[str, list[str]] = {}
        for key, file in weight_map.items():
            if not (ckpt / file).is_file():
                absent.setdefault(file, []).append(key)
        if absent:
            lines = [f"  {ckpt / f}: missing, holds {len(k)} keys, e.g. {', '.join(sorted(k)[:3])}"
                     for f, k in absent.items()]
            raise CheckpointError(f"{index} names shard files that do not exist:\n" + "\n".join(lines))
        return {key: ckpt / file for key, file in weight_map.items()}
    single = ckpt / SINGLE_FILE
    if single.is_file():
        with _open(single) as f:
            return {key: single for key in f.keys()}
    raise CheckpointError(f"{ckpt}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def _open(file: Path, device: str = "cpu"):
    try:
        return safe_open(str(file), framework="pt", device=device)
    except Exception as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_model(path_or_id, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               config: ModelConfig | None = None) -> Qwen3:
    """Build a Qwen3 from a checkpoint directory or hub id, directly on `device` in `dtype` (default: config's)."""
    ckpt = resolve_checkpoint(path_or_id)
    config = config or ModelConfig.from_json(ckpt)
    with torch.device("meta"):
        model = Qwen3(config)
    load_weights(model, ckpt, device=device, dtype=dtype or config.dtype)
    return model


def load_weights(model: Qwen3, ckpt: Path, *, device="cpu", dtype: torch.dtype = torch.float32):
    """Assign every parameter of `model` from the checkpoint; one error lists all missing/unexpected/mis-shaped keys."""
    key_files = _key_files(ckpt)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    tied = model.config.tie_word_embeddings
    problems = [f"  missing {k} (expected shape {list(s)})" for k, s in expected.items() if k not in key_files]
    shapes: dict[str, tuple] = {}
    for file in sorted(set(key_files.values())):
        with _open(file) as f:
            for key in f.keys():
                if key_files.get(key) == file:
                    shapes[key] = tuple(f.get_slice(key).get_shape())
    for key, shape in shapes.items():
        want = expected.get(key)
        if want is None and not (tied and key == "lm_head.weight"):
            problems.append(f"  unexpected {key} {list(shape)} in {key_files[key].name}")
        elif want is not None and shape != want:
            problems.append(f"  {key} in {key_files[key].name} has shape {list(shape)}, the config needs {list(want)}")
    if problems:
        raise CheckpointError(f"{ckpt}: checkpoint does not match the config\n" + "\n".join(problems))

    device = str(torch.device(device))
    extra_head = None
    by_file: dict[Path, list[str]] = {}
    for key, file in key_files.items():
        by_file.setdefault(file, []).append(key)
    for file, keys in by_file.items():
        with _open(file, device) as f:
            for key in keys:
                try:
                    tensor = f.get_tensor(key).to(dtype)
                except Exception as e:
                    raise CheckpointError(f"{file}: cannot read {key} ({type(e).__name__}: {e})") from None
                if key not in expected:  # lm_head.weight stored beside tied embeddings
                    extra_head = (tensor, file)
                    continue
                module_name, _, leaf = key.rpartition(".")
                model.get_submodule(module_name)._parameters[leaf] = nn.Parameter(tensor, requires_grad=True)
    model.tie_weights()
    if extra_head is not None and not torch.equal(extra_head[0], model.lm_head.weight):
        raise CheckpointError(f"{extra_head[1]}: lm_head.weight differs from model.embed_tokens.weight, but "
                              f"{ckpt / 'config.json'} says tie_word_embeddings=true")


def save_model(model: Qwen3, out_dir, *, tokenizer_dir=None, max_shard_bytes: int = 5 * 1024**3,
               dtype: torch.dtype | None = None, state_dict: dict[str, torch.Tensor] | None = None):
    """Write `out_dir` in the Hugging Face layout (config.json, safetensors shards + index, tokenizer files).

    `state_dict` overrides the model's own tensors (e.g. full tensors gathered from a sharded model).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.replace(torch_dtype=_dtype_name(dtype)) if dtype is not None else model.config
    tensors = state_dict if state_dict is not None else model.state_dict()
    if config.tie_word_embeddings:
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}

    shards: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * (dtype or t.dtype).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes

    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    total = 0
    for name, keys in zip(names, shards):
        chunk = {k: tensors[k].detach().to("cpu", dtype or tensors[k].dtype).contiguous() for k in keys}
        total += sum(t.numel() * t.element_size() for t in chunk.values())
        _atomic(out / name, lambda tmp: save_file(chunk, str(tmp), metadata={"format": "pt"}))
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
        _atomic(out / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n"))
    else:
        (out / INDEX_FILE).unlink(missing_ok=True)
    for stale in out.glob("model-*-of-*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    _atomic(out / "config.json", lambda tmp: config.to_json(tmp))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file() and src.resolve() != (out / name).resolve():
                shutil.copyfile(src, out / name)
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _atomic(path: Path, write):
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
