"""FSDP2 under torchrun (2 gloo processes on the CPU) against one plain process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from litere import run_config
from litere.tokenizer import Tokenizer
from litere.train import distributed, sft
from litere.train.sft_data import load_sft_dataset
from litere.weights import load_model
from model_utils import hf_twin
from sft_helpers import REPO, losses, make_data, metrics, run_python, run_train, tiny_overrides

SETTINGS = dict(max_steps=5, checkpoint_every=2, pack_tokens=512)

# sft.train under torchrun, recording after each micro-batch's backward whether it was a padding micro-batch and
# which parameters have a (sharded) gradient: FSDP2 sets one only when it reduce-scatters.
PROBE = """
import json, os, sys
from litere import run_config
from litere.train import distributed, sft

steps, real_micro_step, real_optimizer_step = [[]], sft.micro_step, sft.optimizer_step

def micro_step(model, batch, *args):
    nll = real_micro_step(model, batch, *args)
    steps[-1].append({"padding": not batch.weights.any().item(),
                      "has_grad": sorted({p.grad is not None for p in model.parameters()})})
    return nll

def optimizer_step(*args):
    steps.append([])
    return real_optimizer_step(*args)

sft.micro_step, sft.optimizer_step = micro_step, optimizer_step
cfg = run_config.load(sft.SFTConfig, None, sys.argv[1:])
sft.train(cfg)
with open(os.path.join(cfg.run_dir, f"probe_rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(steps[:-1], f)
distributed.exit_process(0)
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def runs(data_dir):
    """The same 5 fp32 steps by one plain process and by two torchrun processes (sharded, activation checkpointing)."""
    single, sharded = data_dir / "single", data_dir / "sharded"
    settings = dict(SETTINGS, eval_files=[str(data_dir / "eval.jsonl")], eval_every=2)
    sft.train(run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, run_dir=str(single), **settings)))
    result = run_train(tiny_overrides(data_dir, run_dir=str(sharded), activation_checkpointing=True, **settings),
                       nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    return data_dir, single, sharded


def test_two_processes_give_the_losses_of_one(runs):
    _, single, sharded = runs
    one, two = losses(single), losses(sharded)
    assert list(one) == list(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5)
    for a, b in zip(metrics(single), metrics(sharded)):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert ("eval_loss" in a) == ("eval_loss" in b) == (a["step"] in (2, 4, 5))
        assert b.get("eval_loss", 0) == pytest.approx(a.get("eval_loss", 0), abs=1e-5)
        assert (a["tokens"], a["supervised_tokens"]) == (b["tokens"], b["supervised_tokens"])
    assert one[5] < one[1]


def test_sharded_export_holds_the_same_weights(runs):
    _, single, sharded = runs
    a = load_model(single / "final", dtype=torch.float32)
    b = load_model(sharded / "final", dtype=torch.float32)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4, msg=key)
    ids = torch.arange(20)
    with torch.no_grad():
        torch.testing.assert_close(hf_twin(b)(ids[None]).logits[0], b.logits(b(ids, torch.arange(20))),
                                   atol=1e-5, rtol=1e-5)


def test_sharded_checkpoint_resumes_on_one_process(runs, tmp_path):
    data, _, sharded = runs
    checkpoint = sharded / "checkpoints" / "step_00000004"
    cfg = run_config.load(sft.SFTConfig, None, tiny_overrides(data, run_dir=str(tmp_path), resume=str(checkpoint),
                                                              export=False, **SETTINGS))
    sft.train(cfg)
    assert list(losses(tmp_path)) == [5]
    assert losses(tmp_path)[5] == pytest.approx(losses(sharded)[5], abs=1e-5)


def test_fsdp_bf16_policy_runs_on_cpu(runs, tmp_path):
    data, single, _ = runs
    result = run_train(tiny_overrides(data, run_dir=str(tmp_path), precision="bf16", bf16_mode="fsdp", max_steps=2,
                                      export=False), nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    reference = losses(single)
    for step, loss in losses(tmp_path).items():
        assert loss == pytest.approx(reference[step], rel=2e-2)


def test_compiled_blocks_sharded_give_the_losses_of_one_eager_process(runs, tmp_path):
    data, single, _ = runs
    result = run_train(tiny_overrides(data, run_dir=str(tmp_path), compile_blocks=True, activation_checkpointing=True,
                                      **dict(SETTINGS, max_steps=3, checkpoint_every=0), export=False), nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "blocks compiled" in (tmp_path / "train.log").read_text()
    reference = losses(single)
    assert list(losses(tmp_path)) == [1, 2, 3]
    for step, loss in losses(tmp_path).items():
        assert loss == pytest.approx(reference[step], abs=1e-4)


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = distributed.init("cpu")
    assert (env.distributed, env.world_size, env.rank, env.device.type) == (False, 1, 0, "cpu")


@pytest.fixture(scope="module")
def uneven(data_dir):
    """3 steps of 3 conversations with the context loss, by one process and by two under the probe. With micro-batches
    as long as the longest conversation, a rank that takes the longest one alone pads its micro-batches to the
    other rank's two with an empty one."""
    longest = int(load_sft_dataset([data_dir / "train.jsonl"], Tokenizer.from_dir(data_dir / "tok"),
                                   cutoff_len=512)[0].lengths.max()) - 1
    settings = dict(max_steps=3, global_batch=3, pack_tokens=longest, context_loss_weight=0.5)
    single, sharded = data_dir / "uneven_single", data_dir / "uneven_sharded"
    sft.train(run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, run_dir=str(single), **settings)))
    (data_dir / "probe.py").write_text(PROBE)
    result = run_python([str(data_dir / "probe.py"), *tiny_overrides(data_dir, run_dir=str(sharded), **settings)],
                        nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    probes = [json.loads((sharded / f"probe_rank{rank}.json").read_text()) for rank in range(2)]
    return single, sharded, probes


def test_padding_micro_batches_add_nothing_to_the_context_loss(uneven):
    single, sharded, probes = uneven
    assert any(m["padding"] for steps in probes for step in steps for m in step)
    for a, b in zip(metrics(single), metrics(sharded), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-5)
    one, two = load_model(single / "final", dtype=torch.float32), load_model(sharded / "final", dtype=torch.float32)
    for (key, x), y in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5, msg=key)


def test_gradients_are_reduced_once_per_step_after_the_last_micro_batch(uneven):
    _, sharded, probes = uneven
    micro_batches = [r["micro_batches"] for r in metrics(sharded)]
    assert max(micro_batches) > 1
    for steps in probes:
        assert [len(step) for step in steps] == micro_batches
        for step in steps:
            assert [m["has_grad"] for m in step] == [[False]] * (len(step) - 1) + [[True]]


def test_a_torchrun_worker_exits_with_its_code_and_its_output_flushed():
    script = "import sys; from litere.train import distributed; print('done', end=''); print('warn', end='', " \
             "file=sys.stderr); distributed.exit_process(3)"
    plain = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "PYTHONUNBUFFERED")}
    for env in ({**plain, "WORLD_SIZE": "1", "RANK": "0"}, plain):
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120)
        assert (result.returncode, result.stdout, result.stderr) == (3, "done", "warn"), env.get("RANK")
