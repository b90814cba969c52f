"""Resumable training checkpoints (sharded, torch.distributed.checkpoint) and the final Hugging Face export.

A checkpoint is a directory `checkpoints/step_00000012/` holding the DCP shards of the model and optimizer,
`trainer_state.json` (step, data position, scheduler, data fingerprint, world size, the size of every other file)
and `rng/rank{r}.safetensors`. It is written under a temporary name and renamed when complete, so a crash never
leaves a half-written `step_*`; a failed write (no space left) removes the temporary directory and names the stage
and file that failed, and the previous checkpoints stay as they were. DCP re-shards on load: a checkpoint written
by N ranks resumes on M.

Loading unpickles nothing it did not write itself: DCP's `.metadata` is read by an unpickler that knows only DCP's
own metadata classes, its non-tensor items (optimizer hyper-parameters) with `torch.load(weights_only=True)`, and
the RNG state is tensors + JSON in a safetensors file.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.checkpoint import CheckpointException, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from . import distributed
from .distributed import DistEnv
from ..tokenizer import Tokenizer
from ..weights import CheckpointError, CheckpointWriteError, save_model, write_error

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
TMP_PREFIX = ".tmp-"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of the run (those with a trainer_state.json), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / TRAINER_STATE).is_file())


def save(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict, env: DistEnv, keep: int = 2,
         extra: dict | None = None):
    """Every rank calls this; the checkpoint appears under its final name only once all ranks have written.
    `extra` maps names to further (model, optimizer) pairs saved beside the main one (the RL critic).

    A failed write on any rank (no space left, ...) raises CheckpointWriteError on every rank, naming the stage
    and file; the temporary directory is removed and the previous checkpoints are untouched."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(TMP_PREFIX + final.name)
    where = f"checkpoint of step {step}"

    def prepare():
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)

    _stage(env, tmp, f"{where}: creating {tmp}", prepare, main_only=True)
    with _single_process_quiet():
        _stage(env, tmp, f"{where}: writing the model and optimizer shards (DCP) to {tmp}",
               lambda: dcp.save(_states(model, optimizer, extra), checkpoint_id=str(tmp), no_dist=not env.distributed))
    rng_file = tmp / "rng" / f"rank{env.rank}.safetensors"
    _stage(env, tmp, f"{where}: writing {rng_file}", lambda: _save_rng(rng_file))

    def finish():
        state = {**trainer_state, "step": step, "world_size": env.world_size, "scheduler": scheduler.state_dict(),
                 "files": _file_sizes(tmp)}
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    _stage(env, tmp, f"{where}: writing {tmp / TRAINER_STATE}", finish, main_only=True)
    if env.is_main:
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(env)
    return final


def _stage(env: DistEnv, tmp: Path, what: str, write, main_only: bool = False):
    """Run one write of a checkpoint (on rank 0 only, or on every rank); if it fails on any rank, every rank
    raises CheckpointWriteError naming `what`, after rank 0 has removed the temporary directory `tmp`."""
    error = None
    if env.is_main or not main_only:
        try:
            write()
        except (Exception, CheckpointException) as e:  # OSError; DCP's CheckpointException is a BaseException
            error = e
    failed = error is not None
    if env.distributed:
        failed = bool(distributed.all_reduce_sum(torch.tensor(int(failed), device=env.device), env).item())
    if failed:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise CheckpointWriteError(f"{what} failed on another rank")
        raise write_error(what, _cause(error)) from error


def _cause(e: Exception) -> Exception:
    """The OSError under a writer's own error (DCP wraps each rank's failure), where there is one."""
    seen = e
    for _ in range(8):
        if isinstance(seen, OSError):
            return seen
        inner = getattr(seen, "failures", None)  # DCP's CheckpointException: {rank: exception}
        if isinstance(inner, dict) and inner:
            seen = next(iter(inner.values()))
            seen = seen[0] if isinstance(seen, tuple) else seen
            continue
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            break
    return e


def _file_sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


# --- reading ------------------------------------------------------------------------------------------------------
def verify(path: Path) -> dict:
    """The trainer state of the checkpoint `path` once its files look whole: trainer_state.json readable, every
    file it lists present with its size, DCP's metadata readable and every shard long enough for what it names.
    Raises CheckpointError naming the file at fault. Reads no tensor."""
    path = Path(path)
    state_file = path / TRAINER_STATE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{state_file}: missing (not a complete checkpoint)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_file}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "scheduler" not in state:
        raise CheckpointError(f"{state_file}: not a trainer state (needs 'step' and 'scheduler')")
    for name, size in (state.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (the checkpoint lists it)")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, the checkpoint wrote {size} (cut short?)")
    metadata = _read_metadata(path)
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in needed.items():
        file = path / name
        if Path(name).name != name:
            raise CheckpointError(f"{path / '.metadata'}: names a shard outside the checkpoint ({name!r})")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (DCP metadata names it)")
        if file.stat().st_size < size:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, but DCP metadata needs {size} (cut short?)")
    return state


def latest_usable(run_dir: Path, log=print) -> Path | None:
    """The newest complete checkpoint of the run that `verify` accepts; each newer one that it refuses is logged
    with the reason. None when the run has no checkpoint; CheckpointError when it has some and none is usable."""
    found = list_checkpoints(run_dir)
    refused = []
    for path in reversed(found):
        try:
            verify(path)
        except CheckpointError as e:
            refused.append(f"{path.name} ({e})")
            log(f"warning: checkpoint {path} is unusable: {e}" + ("; trying the one before it"
                                                                  if len(refused) < len(found) else ""))
            continue
        if refused:
            log(f"resuming from {path}, the newest usable checkpoint ({len(refused)} newer one(s) unusable)")
        return path
    if refused:
        raise CheckpointError(f"{run_dir}: no usable checkpoint to resume from: " + "; ".join(refused))
    return None


def load(path: Path, model, optimizer, scheduler, env: DistEnv, extra: dict | None = None, log=None) -> dict:
    """Restore model, optimizer, scheduler (and the `extra` pairs, as saved) and this rank's RNG from `path`;
    returns the trainer state. A checkpoint that cannot be read raises CheckpointError naming the file."""
    path = Path(path)
    trainer_state = verify(path)
    state = _states(model, optimizer, extra)
    try:
        with _single_process_quiet():
            dcp.load(state, storage_reader=_SafeReader(path), planner=_SafePlanner(), no_dist=not env.distributed)
        for prefix, (m, o) in _pairs(model, optimizer, extra).items():
            set_state_dict(m, o, model_state_dict=state[prefix + "model"], optim_state_dict=state[prefix + "optim"])
        scheduler.load_state_dict(trainer_state["scheduler"])
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot restore the checkpoint ({type(e).__name__}: {e})") from None
    _load_rng(path, env.rank, log)
    return trainer_state


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's .metadata is a pickle: allow its own metadata classes, torch sizes and dtypes, and paths only."""
    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
               ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
               ("collections", "OrderedDict"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module == "torch.distributed.checkpoint.metadata" and name.isidentifier():
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:  # its own classes, not what it imports
                return found
        if module == "torch" and name.isidentifier() and isinstance(getattr(torch, name, None),
                                                                    (torch.dtype, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")


def _read_metadata(path: Path):
    file = path / ".metadata"
    try:
        with file.open("rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (DCP metadata)") from None
    except Exception as e:  # cut short, garbage, a forbidden class
        raise CheckpointError(f"{file}: unreadable DCP metadata ({type(e).__name__}: {e})") from None
    if not isinstance(getattr(metadata, "storage_data", None), dict):
        raise CheckpointError(f"{file}: not DCP metadata")
    return metadata


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        metadata = _read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """DCP's non-tensor items (optimizer hyper-parameters: numbers, tuples, strings) with weights_only=True."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _states(model, optimizer, extra: dict | None) -> dict:
    """{"model", "optim"} of the main pair and {"<name>.model", "<name>.optim"} of each extra pair."""
    states = {}
    for prefix, (m, o) in _pairs(model, optimizer, extra).items():
        states[prefix + "model"], states[prefix + "optim"] = get_state_dict(m, o)
    return states


def _pairs(model, optimizer, extra: dict | None) -> dict:
    return {"": (model, optimizer), **{f"{name}.": pair for name, pair in (extra or {}).items()}}


def remove_partial(run_dir: Path, env: DistEnv):
    """Temporary directories of checkpoints that a crash interrupted."""
    root = Path(run_dir) / CHECKPOINTS
    if env.is_main and root.is_dir():
        for tmp in root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier(env)


def export_hf(model, out_dir: Path, tokenizer: Tokenizer, tokenizer_dir: str | None, env: DistEnv,
              dtype: torch.dtype | None = None) -> Path:
    """Gather the full weights and write `out_dir` in the Hugging Face layout, tokenizer included (rank 0).

    Written beside `out_dir` under a temporary name and swapped in when complete: a failed write (no space left)
    removes the temporary directory, keeps the previous `out_dir` and raises CheckpointWriteError on every rank."""
    out_dir = Path(out_dir)
    state = distributed.full_state(model)
    tmp = out_dir.with_name(TMP_PREFIX + out_dir.name)

    def write():
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tmp, state_dict=state, dtype=dtype, tokenizer_dir=tokenizer_dir)
        if not (tmp / "tokenizer_config.json").is_file():
            tokenizer.save(tmp)
        old = out_dir.with_name(".old-" + out_dir.name)
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)  # kept until the new export is in place
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)

    _stage(env, tmp, f"exporting {out_dir}", write, main_only=True)
    distributed.barrier(env)
    return out_dir


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes a single process even when told so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _save_rng(file: Path):
    """This process's RNG states as tensors + JSON in a safetensors file (nothing to unpickle on load)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    metadata = {"python": json.dumps([version, list(internal), gauss]),
                "numpy": json.dumps([name, int(pos), int(has_gauss), float(cached)])}
    save_file(tensors, str(file), metadata=metadata)


def _load_rng(path: Path, rank: int, log=None):
    """This rank's RNG states; absent when resuming on more ranks than wrote the checkpoint. A checkpoint of an
    earlier version (rng/rank{r}.pt, written with torch.save) is read with weights_only=True."""
    file = path / "rng" / f"rank{rank}.safetensors"
    old = path / "rng" / f"rank{rank}.pt"
    try:
        if file.is_file():
            with safe_open(str(file), framework="pt") as f:
                metadata = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            version, internal, gauss = json.loads(metadata["python"])
            name, pos, has_gauss, cached = json.loads(metadata["numpy"])
            state = {"torch": tensors["torch"], "python": (version, tuple(internal), gauss),
                     "numpy": (name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached)}
            if "cuda" in tensors:
                state["cuda"] = tensors["cuda"]
        elif old.is_file():
            file = old
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                state = torch.load(old, weights_only=True)
        else:
            return
        _set_rng_state(state)
    except Exception as e:  # the weights and the position are restored; only the random streams differ
        message = (f"warning: {file}: cannot restore the random number generators ({type(e).__name__}: {e}); "
                   "resuming with fresh ones")
        if log:
            log(message)
        else:
            warnings.warn(message, stacklevel=2)


_core = getattr(np, "_core", None) or np.core
# what torch.save of numpy's RNG state holds; torch's weights-only unpickler rebuilds these and nothing else
_NUMPY_GLOBALS = [_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
