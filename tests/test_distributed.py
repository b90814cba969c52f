"""FSDP2 under torchrun (2 gloo processes on the CPU) against one plain process."""
import json

import pytest
import torch

from litere import run_config
from litere.train import distributed, sft
from litere.weights import load_model
from model_utils import hf_twin
from sft_helpers import losses, make_data, run_train, tiny_overrides

SETTINGS = dict(max_steps=5, checkpoint_every=2, pack_tokens=512)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 5 fp32 steps by one plain process and by two torchrun processes (sharded, activation checkpointing)."""
    tmp = make_data(tmp_path_factory.mktemp("dist"))
    single, sharded = tmp / "single", tmp / "sharded"
    settings = dict(SETTINGS, eval_files=[str(tmp / "eval.jsonl")], eval_every=2)
    sft.train(run_config.load(sft.SFTConfig, None, tiny_overrides(tmp, run_dir=str(single), **settings)))
    result = run_train(tiny_overrides(tmp, run_dir=str(sharded), activation_checkpointing=True, **settings), nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp, single, sharded


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = distributed.init("cpu")
    assert (env.distributed, env.world_size, env.rank, env.device.type) == (False, 1, 0, "cpu")
