"""A non-finite loss or gradient in SFT or RL: the optimizer step is skipped whole (weights, optimizer moments and
step count, LR schedule unchanged; the gradients zeroed) and counted as `skipped_updates` in metrics.jsonl; the run
goes on; `max_nonfinite_steps` skipped steps in a row stop it with a message naming the step and the checkpoint to
resume from."""
import json

import pytest
import torch

from litere import run_config
from litere.rl import loop
from litere.train import core, sft
from litere.train.core import NonFiniteError, optimizer_step
from model_utils import random_model, small_config
from rl_helpers import make_toy, rl_config
from sft_helpers import make_data, metrics, tiny_overrides


pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(model, optimizer, scheduler) -> dict:
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "moments": {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(optimizer.state.values())},
            "schedule": scheduler.state_dict()["last_epoch"] if scheduler is not None else None}


def assert_same(a: dict, b: dict):
    assert a["schedule"] == b["schedule"]
    assert a["params"].keys() == b["params"].keys()
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), key
    assert a["moments"].keys() == b["moments"].keys()
    for i in a["moments"]:
        for key in a["moments"][i]:
            assert torch.equal(a["moments"][i][key], b["moments"][i][key]), (i, key)


@pytest.mark.parametrize("fault", ["nan_grad", "inf_grad", "nan_loss"])
def test_a_non_finite_step_changes_nothing(fault):
    model = random_model(small_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    ids = torch.arange(16)

    def backward(poison: bool):
        loss = model.logits(model(ids, torch.arange(16))).logsumexp(-1).mean()
        loss.backward()
        if poison and fault != "nan_loss":
            next(iter(model.parameters())).grad[0, 0] = float("nan") if fault == "nan_grad" else float("inf")
        return float("nan") if poison and fault == "nan_loss" else float(loss.detach())

    assert optimizer_step(model, optimizer, scheduler, 1.0, loss=backward(False))[1]  # moments exist now
    before = snapshot(model, optimizer, scheduler)
    norm, stepped = optimizer_step(model, optimizer, scheduler, 1.0, loss=backward(True))
    assert not stepped and (fault == "nan_loss" or not torch.isfinite(torch.tensor(norm)))
    assert all(p.grad is None for p in model.parameters())
    assert_same(before, snapshot(model, optimizer, scheduler))
    _, stepped = optimizer_step(model, optimizer, scheduler, 1.0, loss=backward(False))  # and it goes on
    assert stepped and scheduler.state_dict()["last_epoch"] == before["schedule"] + 1
    assert any(not torch.equal(v, before["params"][k]) for k, v in model.state_dict().items())


# --- SFT ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("nonfinite"), n=24)


def poison_steps(monkeypatch, steps: set[int], kind: str = "grad") -> dict:
    """Make the SFT trainer's micro-batches of the given (1-based) steps produce a NaN gradient ("grad": a hook
    writes NaN into one weight's gradient) or a NaN loss and gradient ("loss"); record the model, optimizer and
    schedule around every optimizer step."""
    seen = {"step": 0, "around": []}
    real_micro, real_step = sft.micro_step, sft.optimizer_step

    def micro(model, batch, scale, *args, **kwargs):
        step = seen["step"] + 1
        if step in steps and kind == "loss":
            return real_micro(model, batch, scale * float("nan"), *args, **kwargs) * float("nan")
        out = real_micro(model, batch, scale, *args, **kwargs)
        if step in steps:
            model.model.layers[0].mlp.up_proj.weight.grad[0, 0] = float("nan")
        return out

    def step(model, optimizer, scheduler, *args, **kwargs):
        before = snapshot(model, optimizer, scheduler)
        result = real_step(model, optimizer, scheduler, *args, **kwargs)
        seen["step"] += 1
        seen["around"].append((before, snapshot(model, optimizer, scheduler), result))
        return result

    monkeypatch.setattr(sft, "micro_step", micro)
    monkeypatch.setattr(sft, "optimizer_step", step)
    return seen


def sft_config(data_dir, run_dir, **settings):
    base = dict(max_steps=5, global_batch=8, export=False)
    return run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, run_dir=str(run_dir), **{**base, **settings}))


@pytest.mark.parametrize("kind", ["grad", "loss"])
def test_sft_skips_and_counts_a_non_finite_step_and_goes_on(data_dir, tmp_path, monkeypatch, kind):
    seen = poison_steps(monkeypatch, {3}, kind)
    sft.train(sft_config(data_dir, tmp_path))
    records = metrics(tmp_path)
    assert [r["skipped_updates"] for r in records] == [0, 0, 1, 0, 0]
    assert records[2]["grad_norm"] is None  # NaN is written as null: metrics.jsonl stays strict JSON
    assert (records[2]["loss"] is None) == (kind == "loss")
    before, after, (_, stepped) = seen["around"][2]
    assert not stepped
    assert_same(before, after)
    for i in (3, 4):  # later steps train
        before, after, (norm, stepped) = seen["around"][i]
        assert stepped and norm == norm and after["schedule"] == before["schedule"] + 1
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for i, r in enumerate(records) if i != 2)
    assert "step 3/5" in (tmp_path / "train.log").read_text() and "skipped: non-finite" in \
        (tmp_path / "train.log").read_text()
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_sft_stops_after_k_non_finite_steps_in_a_row_naming_the_step_and_checkpoint(data_dir, tmp_path,
                                                                                     monkeypatch):
    poison_steps(monkeypatch, {2, 3, 4, 5})
    with pytest.raises(NonFiniteError) as e:
        sft.train(sft_config(data_dir, tmp_path, checkpoint_every=1, keep_checkpoints=5, max_nonfinite_steps=3))
    message = str(e.value)
    newest = tmp_path / "checkpoints" / "step_00000003"
    assert message.startswith("stopping at step 4: 3 optimizer steps in a row had a non-finite loss or gradient")
    assert f"resume from {newest}" in message and "max_nonfinite_steps=3" in message
    assert message in (tmp_path / "train.log").read_text()
    assert [r["skipped_updates"] for r in metrics(tmp_path)] == [0, 1, 1, 1]
    # two in a row are not enough; 0 never stops
    monkeypatch.undo()
    poison_steps(monkeypatch, {2, 3, 5})
    sft.train(sft_config(data_dir, tmp_path / "two", max_nonfinite_steps=3))
    assert [r["skipped_updates"] for r in metrics(tmp_path / "two")] == [0, 1, 1, 0, 1]
    monkeypatch.undo()
    poison_steps(monkeypatch, {1, 2, 3, 4, 5})
    sft.train(sft_config(data_dir, tmp_path / "never", max_nonfinite_steps=0))
    assert [r["skipped_updates"] for r in metrics(tmp_path / "never")] == [1] * 5


def test_the_stop_names_no_checkpoint_when_there_is_none(data_dir, tmp_path, monkeypatch):
    poison_steps(monkeypatch, {1, 2})
    with pytest.raises(NonFiniteError, match="stopping at step 2: .*there is no checkpoint yet"):
        sft.train(sft_config(data_dir, tmp_path, max_nonfinite_steps=2))


# --- RL -------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp("toy"), sft_steps=0)  # a random policy: the loop, not learning


def poison_rl(monkeypatch, steps: set[int]) -> list:
    """The policy loss of the given (1-based) RL steps is NaN; the policy and optimizer around every update."""
    real_loss, real_step, around = loop.RLRun._policy_loss, loop.optimizer_step, []

    def policy_loss(self, *args, **kwargs):
        loss = real_loss(self, *args, **kwargs)
        return loss * float("nan") if self.step + 1 in steps else loss

    def step(model, optimizer, scheduler, *args, **kwargs):
        before = snapshot(model, optimizer, scheduler)
        result = real_step(model, optimizer, scheduler, *args, **kwargs)
        around.append((before, snapshot(model, optimizer, scheduler), result))
        return result

    monkeypatch.setattr(loop.RLRun, "_policy_loss", policy_loss)
    monkeypatch.setattr(loop, "optimizer_step", step)
    return around


RL = dict(max_steps=3, export=False, entropy_coef=0.01, samples_per_prompt=4, prompts_per_step=2)


def test_rl_skips_and_counts_a_non_finite_update_and_goes_on(toy, tmp_path, monkeypatch):
    around = poison_rl(monkeypatch, {2})
    loop.train(rl_config(toy, run_dir=str(tmp_path), mini_batches=2, **RL))
    records = metrics(tmp_path)
    assert [r["skipped_updates"] for r in records] == [0, 2, 0]
    assert records[1]["grad_norm"] is None and records[0]["grad_norm"] > 0 and records[2]["grad_norm"] > 0
    assert [stepped for _, _, (_, stepped) in around] == [True, True, False, False, True, True]
    for before, after, (_, stepped) in around[2:4]:
        assert_same(before, after)
    assert around[4][0]["schedule"] == around[1][1]["schedule"]  # the schedule did not move in step 2


def test_rl_stops_after_k_non_finite_updates_in_a_row(toy, tmp_path, monkeypatch):
    poison_rl(monkeypatch, {2, 3})
    with pytest.raises(NonFiniteError) as e:
        loop.train(rl_config(toy, run_dir=str(tmp_path), checkpoint_every=1, max_nonfinite_steps=2,
                             **{**RL, "max_steps": 4}))
    newest = tmp_path / "checkpoints" / "step_00000002"
    assert str(e.value).startswith("stopping at step 3: 2 policy updates in a row had a non-finite loss")
    assert f"resume from {newest}" in str(e.value)
    assert str(e.value) in (tmp_path / "train.log").read_text()
    assert [r["skipped_updates"] for r in metrics(tmp_path)] == [0, 1]


def test_the_setting_is_checked():
    with pytest.raises(run_config.RunConfigError, match="max_nonfinite_steps=-1 must be >= 0"):
        run_config.load(sft.SFTConfig, None, ["max_nonfinite_steps=-1"])
    assert core.TrainerConfig().max_nonfinite_steps == 3
