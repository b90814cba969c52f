"""Checkpoints under faults. Hugging Face weights: truncated files, wrong dtypes or shapes, a missing or lying shard,
NaN weights give one CheckpointError naming the file and key, and nothing is half-loaded. Resumable (DCP)
checkpoints: a corrupt newest one makes resume=auto fall back to the previous complete one and say so; none usable is
a clear error. No space left while checkpointing or exporting: the previous checkpoint stays complete and loadable,
the half-written temporary files go, and the error names the stage and the file. Nothing is unpickled on load."""
import errno
import json
import os
import pickle
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from torch.distributed.checkpoint import filesystem as dcp_filesystem

from litere import run_config, weights
from litere.train import checkpoint, sft
from litere.train.distributed import DistEnv
from litere.weights import CheckpointError, CheckpointWriteError, load_model, load_weights, save_model
from model_utils import random_model, small_config
from sft_helpers import REPO, losses, make_data, tiny_overrides

ENV = DistEnv()


pytestmark = pytest.mark.usefixtures("one_thread")


def state_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state(model, expected: dict):
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# --- Hugging Face weights ------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    """A sharded checkpoint (4 shards + index) of a random model, and the model."""
    model = random_model(small_config(tie_word_embeddings=False))
    save_model(model, tmp_path / "ckpt", max_shard_bytes=120_000)
    assert len(list((tmp_path / "ckpt").glob("model-*.safetensors"))) >= 3
    return tmp_path / "ckpt", model


def rewrite_shard(ckpt: Path, key: str, change):
    """Rewrite the shard that holds `key` with `change(tensors)` applied."""
    index = json.loads((ckpt / weights.INDEX_FILE).read_text())
    file = ckpt / index["weight_map"][key]
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})
    return file


def test_truncated_shards_name_the_file_and_leave_the_model_as_it_was(saved):
    ckpt, model = saved
    rng = random.Random(0)
    target = random_model(small_config(tie_word_embeddings=False), seed=1)
    before = state_of(target)
    shards = sorted(ckpt.glob("model-*.safetensors"))
    originals = {f: f.read_bytes() for f in shards}
    for case in range(60):
        file = rng.choice(shards)
        whole = originals[file]
        if case % 3 == 2:  # garbage in the header instead of a cut
            at = rng.randrange(8, min(len(whole), 200))
            file.write_bytes(whole[:at] + bytes(rng.randrange(256) for _ in range(4)) + whole[at + 4:])
        else:
            file.write_bytes(whole[:rng.randrange(len(whole))])
        try:
            load_weights(target, ckpt)
        except CheckpointError as e:
            assert file.name in str(e), str(e)
            assert_state(target, before)  # all or nothing
        else:  # a header that still parses to the same layout: the weights may differ, the structure may not
            assert case % 3 == 2
            before = state_of(target)
        file.write_bytes(whole)
    load_weights(target, ckpt)
    assert_state(target, state_of(model))


@pytest.mark.parametrize("fault", ["int_dtype", "bool_dtype", "shape", "nan", "inf", "lying_index", "outside"])
def test_bad_tensors_name_the_file_and_key_and_nothing_is_half_loaded(saved, fault):
    ckpt, model = saved
    keys = sorted(model.state_dict())
    key = keys[-3]  # in a later shard: the first shards would be assigned before it is read, were it not all or nothing
    if fault in ("int_dtype", "bool_dtype"):
        file = rewrite_shard(ckpt, key, lambda t: t.update({key: t[key].to(torch.int64 if fault == "int_dtype"
                                                                                  else torch.bool)}))
        message = f"{key} in {file.name} has dtype {'I64' if fault == 'int_dtype' else 'BOOL'}"
    elif fault == "shape":
        file = rewrite_shard(ckpt, key, lambda t: t.update({key: t[key][:-1].contiguous()}))
        message = f"{key} in {file.name} has shape"
    elif fault in ("nan", "inf"):
        def poison(t):
            t[key] = t[key].clone()
            t[key].view(-1)[3] = float(fault)
        file = rewrite_shard(ckpt, key, poison)
        message = f"{file}: {key} holds 1 non-finite value"
    elif fault == "lying_index":  # the index names a shard that does not hold the key
        index = json.loads((ckpt / weights.INDEX_FILE).read_text())
        other = next(f for f in sorted(set(index["weight_map"].values())) if f != index["weight_map"][key])
        index["weight_map"][key] = other
        (ckpt / weights.INDEX_FILE).write_text(json.dumps(index))
        message = f"{key}: {weights.INDEX_FILE} places it in {other}, which does not hold it"
    else:  # the index reaches out of the checkpoint directory
        index = json.loads((ckpt / weights.INDEX_FILE).read_text())
        index["weight_map"][key] = "../elsewhere.safetensors"
        (ckpt / weights.INDEX_FILE).write_text(json.dumps(index))
        message = "names files outside the checkpoint directory"
    target = random_model(small_config(tie_word_embeddings=False), seed=1)
    before = state_of(target)
    with pytest.raises(CheckpointError) as e:
        load_weights(target, ckpt)
    assert message in str(e.value), str(e.value)
    assert_state(target, before)
    with pytest.raises(CheckpointError):
        load_model(ckpt)
    if fault in ("nan", "inf"):  # asked for, they load
        assert not torch.isfinite(load_model(ckpt, check_finite=False).state_dict()[key]).all()


def test_a_missing_shard_and_a_broken_index(saved):
    ckpt, _ = saved
    victim = sorted(ckpt.glob("model-*.safetensors"))[2]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"{victim}: missing, holds"):
        load_model(ckpt)
    for text in ["{not json", '{"weight_map": [1, 2]}', '{"weight_map": {"a": 3}}', "\xff", "[]"]:
        (ckpt / weights.INDEX_FILE).write_text(text, encoding="latin-1")
        with pytest.raises(CheckpointError, match=weights.INDEX_FILE):
            load_model(ckpt)


# --- no space left while writing weights -----------------------------------------------------------------------------
def no_space_after(monkeypatch, module, name: str, calls: int):
    """`module.name` works `calls` times, then writes half a file and raises ENOSPC."""
    real, seen = getattr(module, name), []

    def failing(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            target = next((a for a in args if isinstance(a, (str, Path)) and Path(a).is_absolute()), None)
            stream = next((a for a in args if hasattr(a, "write") and hasattr(a, "tell")), None)
            if stream is not None:
                stream.write(b"half")
            elif target is not None and not Path(target).is_dir():
                Path(target).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("calls", [0, 1, 3])
def test_no_space_in_save_model_keeps_the_previous_files(saved, monkeypatch, calls):
    ckpt, model = saved
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    no_space_after(monkeypatch, weights, "save_file", calls)
    with pytest.raises(CheckpointWriteError) as e:
        save_model(random_model(small_config(tie_word_embeddings=False), seed=5), ckpt, max_shard_bytes=120_000)
    assert e.value.errno == errno.ENOSPC and "No space left on device" in str(e.value)
    assert f"writing {ckpt / f'model-{calls + 1:05d}-of-'}" in str(e.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # no .tmp left, nothing replaced
    assert_state(load_model(ckpt), state_of(model))


# --- resumable checkpoints -----------------------------------------------------------------------------------------
def tiny_state(seed: int = 0):
    model = random_model(small_config(), seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(torch.arange(8), torch.arange(8)).sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return model, optimizer, scheduler


def test_the_rng_file_round_trips_without_pickle(tmp_path):
    model, optimizer, scheduler = tiny_state()
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    np.random.normal()  # numpy keeps a cached gaussian: that is state too
    path = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {}, ENV)
    assert sorted(p.name for p in (path / "rng").iterdir()) == ["rank0.safetensors"]
    expected = (torch.rand(3), random.random(), np.random.rand(3), np.random.normal())
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    checkpoint.load(path, *tiny_state(1), ENV)
    got = (torch.rand(3), random.random(), np.random.rand(3), np.random.normal())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    assert np.array_equal(got[2], expected[2]) and got[3] == expected[3]


def test_an_old_torch_saved_rng_file_resumes_and_a_malicious_one_is_not_run(tmp_path):
    model, optimizer, scheduler = tiny_state()
    path = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {}, ENV)
    (path / "rng" / "rank0.safetensors").unlink()
    state = json.loads((path / checkpoint.TRAINER_STATE).read_text())
    del state["files"]  # the earlier version listed no files
    (path / checkpoint.TRAINER_STATE).write_text(json.dumps(state))
    torch.manual_seed(4), random.seed(4), np.random.seed(4)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
               path / "rng" / "rank0.pt")  # as the earlier version wrote it
    expected = (torch.rand(2), random.random(), np.random.rand(2))
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    checkpoint.load(path, *tiny_state(1), ENV)
    got = (torch.rand(2), random.random(), np.random.rand(2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (path / "rng" / "rank0.pt").write_bytes(pickle.dumps({"torch": Payload()}, protocol=2))
    logged = []
    checkpoint.load(path, *tiny_state(1), ENV, log=logged.append)
    assert not marker.exists()
    assert len(logged) == 1 and "cannot restore the random number generators" in logged[0]


def test_dcp_metadata_and_items_are_not_unpickled_as_code(tmp_path):
    model, optimizer, scheduler = tiny_state()
    path = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {}, ENV)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (path / ".metadata").write_bytes(pickle.dumps(Payload()))
    state = json.loads((path / checkpoint.TRAINER_STATE).read_text())
    del state["files"]  # an earlier version's checkpoint: no list of file sizes to catch the change first
    (path / checkpoint.TRAINER_STATE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"\.metadata: unreadable DCP metadata .*not part of DCP metadata"):
        checkpoint.load(path, *tiny_state(1), ENV)
    assert not marker.exists()
    # only DCP's own metadata classes: not what its module imports, not their methods, nothing else
    unpickler = checkpoint._MetadataUnpickler(open(os.devnull, "rb"))
    for module, name in [("torch.distributed.checkpoint.metadata", "os"), ("torch.distributed.checkpoint.metadata",
                         "Metadata.__init__"), ("torch", "load"), ("pathlib", "Path"), ("builtins", "eval")]:
        with pytest.raises(pickle.UnpicklingError):
            unpickler.find_class(module, name)


def test_no_weights_only_false_in_the_package():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "litere").rglob("*.py")
                 if "weights_only=False" in p.read_text()]
    assert offenders == []


# corruptions of a resumable checkpoint: (name, what to do to the directory)
def cut_shard(path: Path):
    shard = next(path.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])


def garbage_state(path: Path):
    (path / checkpoint.TRAINER_STATE).write_bytes(b'{"step": 2, "sched')


def garbage_metadata(path: Path):
    (path / ".metadata").write_bytes(b"\x80\x04garbage")


def cut_rng(path: Path):
    rng = next((path / "rng").iterdir())
    rng.write_bytes(rng.read_bytes()[:-7])


def missing_shard(path: Path):
    next(path.glob("*.distcp")).unlink()


CORRUPTIONS = [cut_shard, garbage_state, garbage_metadata, cut_rng, missing_shard]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_verify_names_the_file_of_each_corruption(tmp_path, corrupt):
    model, optimizer, scheduler = tiny_state()
    path = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {}, ENV)
    assert checkpoint.verify(path)["step"] == 1
    corrupt(path)
    with pytest.raises(CheckpointError) as e:
        checkpoint.verify(path)
    assert str(e.value).startswith(str(path)), str(e.value)
    with pytest.raises(CheckpointError):
        checkpoint.load(path, *tiny_state(1), ENV)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("faults"), n=24)


def sft_config(data_dir, run_dir, **settings):
    base = dict(max_steps=4, global_batch=8, checkpoint_every=1, keep_checkpoints=5, export=False)
    return run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, run_dir=str(run_dir), **{**base, **settings}))


@pytest.fixture(scope="module")
def reference(data_dir):
    """An uninterrupted 4-step run."""
    run_dir = data_dir / "reference"
    sft.train(sft_config(data_dir, run_dir))
    return losses(run_dir)


@pytest.mark.parametrize("corrupt", [cut_shard, garbage_state], ids=lambda f: f.__name__)
def test_resume_falls_back_to_the_previous_complete_checkpoint_and_says_so(data_dir, reference, tmp_path,
                                                                          corrupt):
    sft.train(sft_config(data_dir, tmp_path, stop_after_steps=2))  # checkpoints of steps 1 and 2
    newest = tmp_path / "checkpoints" / "step_00000002"
    corrupt(newest)
    sft.train(sft_config(data_dir, tmp_path))
    log = (tmp_path / "train.log").read_text()
    assert f"warning: checkpoint {newest} is unusable: {newest}" in log
    assert f"resuming from {tmp_path / 'checkpoints' / 'step_00000001'}, the newest usable checkpoint" in log
    assert "resumed from" in log and "at step 1" in log
    resumed = losses(tmp_path)
    assert list(resumed) == [1, 2, 3, 4]
    for step, loss in reference.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-6)


def test_no_usable_checkpoint_is_a_clear_error(data_dir, tmp_path):
    sft.train(sft_config(data_dir, tmp_path, stop_after_steps=2))
    for corrupt, path in zip([garbage_metadata, cut_rng], checkpoint.list_checkpoints(tmp_path)):
        corrupt(path)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint to resume from: step_00000002 \(.*\); "
                                              r"step_00000001 \("):
        sft.train(sft_config(data_dir, tmp_path))
    with pytest.raises(CheckpointError, match=r"step_00000001/.metadata: \d+ bytes, the checkpoint wrote \d+"):
        sft.train(sft_config(data_dir, tmp_path / "other", resume=str(tmp_path / "checkpoints" / "step_00000001")))


# --- no space left while checkpointing or exporting ----------------------------------------------------------------
STAGES = {  # what fails -> (module, attribute, calls that work first, what the error names)
    "dcp": (checkpoint.dcp, "save", 0, "writing the model and optimizer shards (DCP)"),
    # inside DCP's writer, which wraps the OSError in its CheckpointException (a BaseException)
    "dcp_item": (dcp_filesystem, "_write_item", 2, "writing the model and optimizer shards (DCP)"),
    "rng": (checkpoint, "save_file", 0, "rng/rank0.safetensors"),
    "state": (checkpoint, "_file_sizes", 0, checkpoint.TRAINER_STATE),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_space_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, stage):
    model, optimizer, scheduler = tiny_state()
    first = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {"data_position": 1}, ENV, keep=1)
    saved = state_of(model)
    files = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    model(torch.arange(8), torch.arange(8)).sum().backward()
    optimizer.step()
    module, name, calls, names = STAGES[stage]
    no_space_after(monkeypatch, module, name, calls)
    with pytest.raises(CheckpointWriteError) as e:
        checkpoint.save(tmp_path, 2, model, optimizer, scheduler, {"data_position": 2}, ENV, keep=1)
    message = str(e.value)
    assert message.startswith(f"[Errno {errno.ENOSPC}] checkpoint of step 2: ") and names in message, message
    assert "No space left on device" in message
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]  # no .tmp- left
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == files
    model2, optimizer2, scheduler2 = tiny_state(1)
    assert checkpoint.load(first, model2, optimizer2, scheduler2, ENV)["data_position"] == 1
    assert_state(model2, saved)


def test_no_space_while_exporting_keeps_the_previous_export(tmp_path, monkeypatch, data_dir):
    from litere.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(data_dir / "tok")
    old = random_model(small_config(vocab_size=384))
    out = checkpoint.export_hf(old, tmp_path / "final", tokenizer, str(data_dir / "tok"), ENV)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    for calls, (module, name) in enumerate([(weights, "save_file"), (weights.shutil, "copyfile")]):
        no_space_after(monkeypatch, module, name, calls)
        with pytest.raises(CheckpointWriteError) as e:
            checkpoint.export_hf(random_model(small_config(vocab_size=384), seed=3), out, tokenizer,
                                 str(data_dir / "tok"), ENV)
        monkeypatch.undo()
        assert str(e.value).startswith(f"[Errno {errno.ENOSPC}] exporting {out} failed: ")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # the temporary export is gone
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert_state(load_model(out, dtype=torch.float32), state_of(old))


def test_an_sft_run_that_runs_out_of_space_resumes_from_its_last_checkpoint(data_dir, reference, tmp_path,
                                                                           monkeypatch):
    no_space_after(monkeypatch, checkpoint.dcp, "save", 2)  # the checkpoint of step 3 fails
    with pytest.raises(CheckpointWriteError, match="checkpoint of step 3: writing the model and optimizer shards"):
        sft.train(sft_config(data_dir, tmp_path))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] != [] and not list(
        (tmp_path / "checkpoints").glob(".tmp-*"))
    sft.train(sft_config(data_dir, tmp_path))
    assert "resumed from" in (tmp_path / "train.log").read_text()
    resumed = losses(tmp_path)
    for step, loss in reference.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-6)


def test_a_real_full_filesystem(tmp_path):
    """The same on a real 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    model, optimizer, scheduler = tiny_state()
    probe = checkpoint.save(tmp_path / "probe", 1, model, optimizer, scheduler, {}, ENV)
    size = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    kib = (size * 3 // 2) // 1024 + 8  # room for one checkpoint and a half
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        first = checkpoint.save(mount, 1, model, optimizer, scheduler, {}, ENV, keep=1)
        saved = state_of(model)
        with pytest.raises(CheckpointWriteError) as e:
            checkpoint.save(mount, 2, model, optimizer, scheduler, {}, ENV, keep=1)
        assert "checkpoint of step 2: " in str(e.value) and "No space left on device" in str(e.value)
        assert sorted(p.name for p in (mount / "checkpoints").iterdir()) == ["step_00000001"]
        model2, optimizer2, scheduler2 = tiny_state(1)
        checkpoint.load(first, model2, optimizer2, scheduler2, ENV)
        assert_state(model2, saved)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
