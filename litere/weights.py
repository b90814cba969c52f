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
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
        outside = sorted({f for f in weight_map.values() if Path(f).name != f or f in ("", ".", "..")})
        if outside:  # a name with a directory part could reach a file outside the checkpoint
            raise CheckpointError(f"{index}: weight_map names files outside the checkpoint directory: "
                                  f"{', '.join(map(repr, outside[:3]))}")
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
               config: ModelConfig | None = None, check_finite: bool = True) -> Qwen3:
    """Build a Qwen3 from a checkpoint directory or hub id, directly on `device` in `dtype` (default: config's)."""
    ckpt = resolve_checkpoint(path_or_id)
    config = config or ModelConfig.from_json(ckpt)
    with torch.device("meta"):
        model = Qwen3(config)
    load_weights(model, ckpt, device=device, dtype=dtype or config.dtype, check_finite=check_finite)
    return model


def load_weights(model: Qwen3, ckpt: Path, *, device="cpu", dtype: torch.dtype = torch.float32,
                 check_finite: bool = True):
    """Assign every parameter of `model` from the checkpoint; one error lists all missing/unexpected/mis-shaped keys.

    All or nothing: every tensor is read and checked (shape, a floating-point dtype, finite values in `dtype` unless
    `check_finite=False`) before the first one is assigned, so a failure leaves `model` as it was.
    """
    key_files = _key_files(ckpt)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    tied = model.config.tie_word_embeddings
    problems = [f"  missing {k} (expected shape {list(s)})" for k, s in expected.items() if k not in key_files]
    shapes: dict[str, tuple] = {}
    for file in sorted(set(key_files.values())):
        with _open(file) as f:
            present = set(f.keys())
            for key in sorted(k for k, kf in key_files.items() if kf == file):
                if key not in present:
                    problems.append(f"  {key}: {INDEX_FILE} places it in {file.name}, which does not hold it")
                    continue
                piece = f.get_slice(key)
                shapes[key] = tuple(piece.get_shape())
                kind = piece.get_dtype()
                if kind not in _FLOAT_DTYPES:
                    problems.append(f"  {key} in {file.name} has dtype {kind}; weights must be floating point")
    for key, shape in shapes.items():
        want = expected.get(key)
        if want is None and not (tied and key == "lm_head.weight"):
            problems.append(f"  unexpected {key} {list(shape)} in {key_files[key].name}")
        elif want is not None and shape != want:
            problems.append(f"  {key} in {key_files[key].name} has shape {list(shape)}, the config needs {list(want)}")
    if problems:
        raise CheckpointError(f"{ckpt}: checkpoint does not match the config\n" + "\n".join(problems))

    device = str(torch.device(device))
    tensors: dict[str, torch.Tensor] = {}
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
                if check_finite and not torch.isfinite(tensor).all():
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise CheckpointError(f"{file}: {key} holds {bad} non-finite value(s) (NaN or inf) in {dtype}; "
                                          "refusing to load it (check_finite=False loads it anyway)")
                tensors[key] = tensor
    head = tensors.pop("lm_head.weight") if tied and "lm_head.weight" in tensors else None
    if head is not None and not torch.equal(head, tensors["model.embed_tokens.weight"]):
        raise CheckpointError(f"{key_files['lm_head.weight']}: lm_head.weight differs from model.embed_tokens.weight, "
                              f"but {ckpt / 'config.json'} says tie_word_embeddings=true")
    for key, tensor in tensors.items():  # nothing above failed: assign
        module_name, _, leaf = key.rpartition(".")
        model.get_submodule(module_name)._parameters[leaf] = nn.Parameter(tensor, requires_grad=True)
    model.tie_weights()


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


class CheckpointWriteError(OSError):
    """Writing a checkpoint or an export failed (no space left, ...); the message names the stage and the file.
    What was there before is unchanged and the half-written files are removed."""


def save_model(model: Qwen3, out_dir, *, tokenizer_dir=None, max_shard_bytes: int = 5 * 1024**3,
               dtype: torch.dtype | None = None, state_dict: dict[str, torch.Tensor] | None = None):
    """Write `out_dir` in the Hugging Face layout (config.json, safetensors shards + index, tokenizer files).

    `state_dict` overrides the model's own tensors (e.g. full tensors gathered from a sharded model). Every file is
    written under a temporary name first and renamed once all are written: a failure (no space left) removes the
    temporary files and leaves what `out_dir` held before as it was.
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
    written: list[Path] = []  # final paths whose temporary file is complete
    try:
        total = 0
        for name, keys in zip(names, shards):
            chunk = {k: tensors[k].detach().to("cpu", dtype or tensors[k].dtype).contiguous() for k in keys}
            total += sum(t.numel() * t.element_size() for t in chunk.values())
            _write_tmp(out / name, lambda tmp: save_file(chunk, str(tmp), metadata={"format": "pt"}), written)
            chunk = None  # freed before the next shard is gathered
        if len(shards) > 1:
            index = {"metadata": {"total_size": total},
                     "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
            _write_tmp(out / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n"), written)
        _write_tmp(out / "config.json", lambda tmp: config.to_json(tmp), written)
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / name
                if src.is_file() and src.resolve() != (out / name).resolve():
                    _write_tmp(out / name, lambda tmp: shutil.copyfile(src, tmp), written)
    except BaseException:
        for path in written:
            _tmp_name(path).unlink(missing_ok=True)
        raise
    for path in written:  # all written: put them in place
        os.replace(_tmp_name(path), path)
    if len(shards) == 1:
        (out / INDEX_FILE).unlink(missing_ok=True)
    for stale in out.glob("model-*-of-*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tmp_name(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_tmp(path: Path, write, written: list[Path]):
    """`write(tmp)` to the temporary name of `path`; a failure removes the temporary file and says which file."""
    tmp = _tmp_name(path)
    written.append(path)
    try:
        write(tmp)
    except Exception as e:  # OSError, or a writer's own error around one (safetensors, torch.save)
        tmp.unlink(missing_ok=True)
        raise write_error(f"writing {path}", e) from e


def write_error(what: str, e: Exception) -> CheckpointWriteError:
    """`what` failed because of `e`, as one error that keeps the errno (ENOSPC: no space left) when there is one."""
    errno_ = getattr(e, "errno", None)
    reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
    return CheckpointWriteError(errno_, f"{what} failed: {reason}") if errno_ else \
        CheckpointWriteError(f"{what} failed: {reason}")
