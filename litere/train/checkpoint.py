"""Resumable training checkpoints (sharded, torch.distributed.checkpoint) and the final Hugging Face export.

A checkpoint is a directory `checkpoints/step_00000012/` holding the DCP shards of the model and optimizer,
`trainer_state.json` (step, data position, scheduler, data fingerprint, world size) and `rng/rank{r}.pt`. It is
written under a temporary name and renamed when complete, so a crash never leaves a half-written `step_*`. DCP
re-shards on load: a checkpoint written by N ranks resumes on M.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from . import distributed
from .distributed import DistEnv
from ..tokenizer import Tokenizer
from ..weights import save_model

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
TMP_PREFIX = ".tmp-"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of the run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / TRAINER_STATE).is_file())


def save(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict, env: DistEnv, keep: int = 2,
         extra: dict | None = None):
    """Every rank calls this; the checkpoint appears under its final name only once all ranks have written.
    `extra` maps names to further (model, optimizer) pairs saved beside the main one (the RL critic)."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(TMP_PREFIX + final.name)
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier(env)
    with _single_process_quiet():
        dcp.save(_states(model, optimizer, extra), checkpoint_id=str(tmp), no_dist=not env.distributed)
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank{env.rank}.pt")
    distributed.barrier(env)
    if env.is_main:
        state = {**trainer_state, "step": step, "world_size": env.world_size, "scheduler": scheduler.state_dict()}
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(env)
    return final


def load(path: Path, model, optimizer, scheduler, env: DistEnv, extra: dict | None = None) -> dict:
    """Restore model, optimizer, scheduler (and the `extra` pairs, as saved) and this rank's RNG from `path`;
    returns the trainer state."""
    path = Path(path)
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint ({TRAINER_STATE} missing)")
    trainer_state = json.loads(state_file.read_text())
    state = _states(model, optimizer, extra)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=not env.distributed)
    for prefix, (m, o) in _pairs(model, optimizer, extra).items():
        set_state_dict(m, o, model_state_dict=state[prefix + "model"], optim_state_dict=state[prefix + "optim"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    rng_file = path / "rng" / f"rank{env.rank}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than wrote the checkpoint
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state


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
    """Gather the full weights and write `out_dir` in the Hugging Face layout, tokenizer included (rank 0)."""
    out_dir = Path(out_dir)
    state = distributed.full_state(model)
    if env.is_main:
        tmp = out_dir.with_name(TMP_PREFIX + out_dir.name)
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tmp, state_dict=state, dtype=dtype, tokenizer_dir=tokenizer_dir)
        if not (tmp / "tokenizer_config.json").is_file():
            tokenizer.save(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    distributed.barrier(env)
    return out_dir


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes a single process even when told so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
