import dataclasses
import itertools
import math

import numpy
import pytest
import torch

from litere import run_config
from litere.bpe import train_tokenizer
from litere.train import sft
from litere.train.distributed import DistEnv
from litere.train.sft_data import BatchPlanner, DataPosition, load_sft_dataset, pack_documents, recall_drills
from litere.tokenizer import Tokenizer, render
from model_utils import random_model, small_config
from sft_helpers import crash_in_step, losses, make_data, metrics, tiny_overrides, write_conversations


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("sft"))


def run(data_dir, run_dir, **settings):
    cfg = run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, run_dir=str(run_dir), **settings))
    sft.train(cfg)
    return losses(run_dir)


def test_packed_and_unpacked_losses_and_gradients_are_equal(data_dir):
    tok = Tokenizer.from_dir(data_dir / "tok")
    dataset, _ = load_sft_dataset([data_dir / "train.jsonl"], tok, cutoff_len=512)
    planner = BatchPlanner(dataset, global_batch=6, unit="sequences", pack_tokens=4096, seed=0)
    (packed,) = planner.batch(DataPosition()).micro_batches
    assert len(packed.seqlens) == 6 and len(set(packed.seqlens)) > 1
    model = random_model(small_config(vocab_size=tok.vocab_size)).train()

    def loss_and_grads(pieces):
        model.zero_grad()
        nll = sum(-(model(ids, pos, seqlens=lens, targets=tgt) * w).sum() for ids, pos, lens, tgt, w in pieces)
        loss = nll / packed.weights.sum()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    loss_packed, grads_packed = loss_and_grads(
        [(packed.input_ids, packed.positions, packed.seqlens, packed.targets, packed.weights)])
    splits = [torch.split(t, packed.seqlens) for t in (packed.input_ids, packed.positions, packed.targets,
                                                        packed.weights)]
    loss_single, grads_single = loss_and_grads(
        [(ids, pos, None, tgt, w) for ids, pos, tgt, w in zip(*splits)])
    assert loss_packed == pytest.approx(loss_single, rel=1e-6)
    for a, b in zip(grads_packed, grads_single):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_accumulation_and_activation_checkpointing_do_not_change_the_losses(data_dir, tmp_path):
    one_micro = run(data_dir, tmp_path / "a", pack_tokens=8192, max_steps=3, export=False)
    several = run(data_dir, tmp_path / "b", pack_tokens=512, max_steps=3, export=False, activation_checkpointing=True)
    records = metrics(tmp_path / "b")
    assert min(r["micro_batches"] for r in records) > 1
    assert list(one_micro) == [1, 2, 3]
    for step in one_micro:
        assert several[step] == pytest.approx(one_micro[step], abs=1e-5)


def test_a_run_trains_and_records_its_metrics(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    settings = dict(epochs=2.0, export=False, eval_files=[str(data_dir / "eval.jsonl")], eval_every=4)
    by_step = run(data_dir, run_dir, **settings)  # 40 conversations / 8 = 5 steps per epoch
    assert list(by_step) == list(range(1, 11))
    assert by_step[10] < by_step[1] - 1.0
    records = metrics(run_dir)
    held_out = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert list(held_out) == [4, 8, 10] and held_out[10] < held_out[4]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "tokens", "supervised_tokens",
            "sequences"} <= set(records[0])
    assert records[0]["lr"] == pytest.approx(3e-3 / 2) and records[-1]["epoch"] == 2.0
    assert all(r["sequences"] == 8 for r in records)
    log = (run_dir / "train.log").read_text()
    assert "step 10/10 | loss" in log and "data: 40 conversations" in log
    saved = run_config.load(sft.SFTConfig, run_dir / "config.toml")
    assert saved == run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, run_dir=str(run_dir), **settings))


def test_stopping_early_keeps_the_schedule_and_a_later_run_continues(data_dir, tmp_path):
    whole = run(data_dir, tmp_path / "whole", max_steps=6, export=False)
    run_dir = tmp_path / "staged"
    first = run(data_dir, run_dir, max_steps=6, stop_after_steps=2, checkpoint_every=0)  # checkpointed anyway
    assert list(first) == [1, 2] and (run_dir / "final" / "config.json").is_file()
    records = metrics(run_dir)
    assert records[-1]["lr"] > 3e-3 * 0.5  # still early in the 6-step schedule, not at its end
    log = (run_dir / "train.log").read_text()
    assert "stopping after step 2" in log and "step 2/2 | loss" in log
    resumed = run(data_dir, run_dir, max_steps=6, stop_after_steps=0, checkpoint_every=0, export=False)
    log = (run_dir / "train.log").read_text()
    assert "at step 2 (epoch" in log and "step 3/6 | loss" in log  # continued, not started over
    records = metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert list(resumed) == list(whole)
    for step in whole:
        assert resumed[step] == pytest.approx(whole[step], abs=1e-6)


def test_bf16_autocast_on_cpu_tracks_fp32(data_dir, tmp_path):
    fp32 = run(data_dir, tmp_path / "fp32", max_steps=2, export=False)
    bf16 = run(data_dir, tmp_path / "bf16", max_steps=2, export=False, precision="bf16")
    for step in fp32:
        assert bf16[step] == pytest.approx(fp32[step], rel=2e-2)


def test_warmup_then_cosine_schedule():
    schedule = sft.WarmupCosine(total_steps=10, warmup_steps=2, min_ratio=0.1)
    values = [schedule(s) for s in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert values[2 + 4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a > b for a, b in zip(values[2:], values[3:])) and values[-1] > 0.1


def test_warmup_hold_decay_schedule_and_an_earlier_decay():
    schedule = sft.WarmupHoldDecay(total_steps=20, warmup_steps=2, decay_steps=4, min_ratio=0.1)
    assert (schedule.decay_start, schedule.end_step) == (16, 20)
    assert [schedule(s) for s in range(3)] == [0.5, 1.0, 1.0] and schedule(15) == 1.0
    assert schedule(18) == pytest.approx(0.1 + 0.9 * 0.5) and schedule(20) == pytest.approx(0.1)
    schedule.start_decay(7)
    assert (schedule.decay_start, schedule.end_step, schedule.decay_triggered_at) == (7, 11, 7)
    assert schedule(7) == 1.0 and schedule(9) == pytest.approx(0.55) and schedule(11) == pytest.approx(0.1)
    schedule.start_decay(5)  # the first decision stands
    assert schedule.end_step == 11
    early = sft.WarmupHoldDecay(total_steps=20, warmup_steps=2, decay_steps=4, min_ratio=0.0)
    early.start_decay(1)  # not before the warmup is over
    assert (early.decay_start, early(1)) == (2, 1.0)


def test_a_rewarm_ramps_back_to_the_peak_and_decays_again():
    schedule = sft.WarmupHoldDecay(total_steps=20, warmup_steps=2, decay_steps=4, min_ratio=0.1)
    with pytest.raises(ValueError, match="where the decay ends"):
        schedule.rewarm(18)
    schedule.rewarm(20)
    assert (schedule.rewarm_starts, schedule.decay_start, schedule.end_step) == ([20], 22, 26)
    assert [schedule(s) for s in (20, 21, 22)] == [pytest.approx(0.55), 1.0, 1.0]
    assert schedule(24) == pytest.approx(0.55) and schedule(26) == pytest.approx(0.1)
    schedule.start_decay(23)  # the probe that starts the first decay has no say after a rewarm
    assert schedule.end_step == 26


def test_a_rewarm_to_a_lower_peak_ramps_and_decays_from_it():
    schedule = sft.WarmupHoldDecay(total_steps=20, warmup_steps=2, decay_steps=4, min_ratio=0.1, rewarm_peak=0.5)
    assert schedule(10) == 1.0 and schedule(20) == pytest.approx(0.1)  # the first cycle keeps the full peak
    schedule.rewarm(20)
    assert [schedule(s) for s in (20, 21, 22)] == [pytest.approx(0.3), 0.5, 0.5]
    assert schedule(24) == pytest.approx(0.3) and schedule(26) == pytest.approx(0.1)


def test_copy_targets_are_pairs_seen_earlier_in_the_conversation_and_never_in_training():
    from litere.train.sft_data import MicroBatch
    ids = torch.tensor([5, 7, 8, 5, 7, 8, 5, 7, 8, 9])  # two conversations: [5 7 8 5 7 8] and [5 7 8 9]
    batch = MicroBatch(ids[:-1], torch.zeros(9, dtype=torch.long), ids[1:], torch.ones(9), [5, 4])
    known = sft.token_pairs(torch.tensor([5]).numpy(), torch.tensor([7]).numpy())  # training saw 5 -> 7 only
    # conversation 1 targets: 7 8 5 7 8 (pairs 5-7 7-8 8-5 5-7 7-8); the second 7-8 repeats an unknown pair
    # conversation 2 (positions 5..8, inputs 8 5 7 8 -> targets 5 7 8 9): nothing repeats within it
    assert sft.copy_targets(batch, known).tolist() == [False, False, False, False, True, False, False, False, False]


def test_number_targets_split_digit_targets_into_new_spellings_and_copies():
    from litere.train.sft_data import MicroBatch
    digits = numpy.zeros(10, dtype=bool)
    digits[[2, 3]] = True  # tokens 2 and 3 are digit pairs
    ids = torch.tensor([5, 2, 3, 5, 2, 3, 5, 2, 3])  # one conversation: ": 25 08" spelt three times
    batch = MicroBatch(ids[:-1], torch.zeros(8, dtype=torch.long), ids[1:], torch.ones(8), [8])
    # targets 2 3 5 2 3 5 2 3: the first number is new, the second and third spellings copy it; the 5s are not digits
    new, copies = sft.number_targets(batch, digits)
    assert new.tolist() == [True, True, False, False, False, False, False, False]
    assert copies.tolist() == [False, False, False, True, True, False, True, True]
    two = MicroBatch(ids[:-1], torch.zeros(8, dtype=torch.long), ids[1:], torch.ones(8), [3, 5])
    # a second conversation from position 3 (inputs 5 2 3 5 2): its first number is new to it, and it copies only
    # its own first spelling
    new, copies = sft.number_targets(two, digits)
    assert new.tolist() == [True, True, False, True, True, False, False, False]
    assert copies.tolist() == [False, False, False, False, False, False, True, True]


def run_with_copy_losses(data_dir, run_dir, monkeypatch, copy_losses: dict, number_losses: dict | None = None,
                         **settings):
    """A run whose held-out copy loss at step s is copy_losses[s] (5.0 where not given), and with number_losses
    its number loss number_losses[s] (0.0 where not given)."""
    real = sft.held_out_loss

    def scripted(model, held_out, env, autocast_dtype):
        result = real(model, held_out, env, autocast_dtype)
        step = len(metrics(run_dir)) + 1 if (run_dir / "metrics.jsonl").exists() else 1
        result["eval_copy_loss"] = copy_losses.get(step, 5.0)
        if number_losses is not None:
            result["eval_number_loss"] = number_losses.get(step, 0.0)
        return result

    monkeypatch.setattr(sft, "held_out_loss", scripted)
    settings = {"export": False, **settings}
    return run(data_dir, run_dir, max_steps=12, warmup_ratio=0.1, decay_steps=3, decay_when_held_out_below=0.5,
               decay_probe="eval_copy_loss", eval_files=[str(data_dir / "eval.jsonl")], eval_every=2, **settings)


def test_a_low_held_out_copy_loss_starts_the_decay_and_ends_the_run_after_it(data_dir, tmp_path, monkeypatch):
    by_step = run_with_copy_losses(data_dir, tmp_path / "run", monkeypatch, {4: 0.3, 6: 0.1})
    assert list(by_step) == [1, 2, 3, 4, 5, 6, 7]  # decision after step 4, three decay steps
    records = metrics(tmp_path / "run")
    assert [r["lr"] for r in records[1:5]] == [3e-3] * 4 and records[-1]["lr"] < records[-2]["lr"] < 3e-3
    assert records[-1]["decay_start"] == 4 and "eval_loss" in records[-1]
    assert "the lr decays from here, the run ends at step 7" in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / "pre_decay").exists()
    untriggered = run_with_copy_losses(data_dir, tmp_path / "never", monkeypatch, {})
    assert list(untriggered) == list(range(1, 13))  # max_steps bounds the run, the decay in its last 3 steps


def test_the_models_before_and_during_the_decay_are_exported_on_request(data_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    run_with_copy_losses(data_dir, tmp_path / "run", monkeypatch, {4: 0.3}, export_before_decay=True,
                         export_during_decay=[2])
    for name, steps in (("pre_decay", 4), ("decay_2", 6)):  # the decay starts after step 4
        stopped_dir = tmp_path / f"stopped{steps}"
        stopped = run_with_copy_losses(data_dir, stopped_dir, monkeypatch, {4: 0.3}, stop_after_steps=steps,
                                       export=True)
        assert list(stopped) == list(range(1, steps + 1))  # the same steps, exported as final
        branch = load_file(tmp_path / "run" / name / "model.safetensors")
        expected = load_file(stopped_dir / "final" / "model.safetensors")
        assert branch.keys() == expected.keys() and all(torch.equal(branch[k], expected[k]) for k in branch)
        assert (tmp_path / "run" / name / "tokenizer.json").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "decay" in p.name) == ["decay_2", "pre_decay"]


def test_a_decay_that_ends_before_numbers_are_learnt_is_run_again(data_dir, tmp_path, monkeypatch):
    rewarm = dict(rewarm_when_held_out_above=1.0, export_before_decay=True)
    # the decay starts after step 4 and ends at 7; the number loss is 2.0 there, so the lr goes back up over the
    # warmup's 2 steps and decays again over 3: the run ends at step 12, and a second rewarm is not allowed
    by_step = run_with_copy_losses(data_dir, tmp_path / "run", monkeypatch, {4: 0.3}, {7: 2.0, 12: 2.0}, **rewarm)
    assert list(by_step) == list(range(1, 13))
    records = metrics(tmp_path / "run")
    lrs = [r["lr"] for r in records]
    assert lrs[6] < lrs[7] < lrs[8] == lrs[9] == 3e-3 > lrs[10] > lrs[11]  # step s + 1's: ramp, peak, decay
    assert records[-1]["decay_start"] == 9 and records[-1]["eval_number_loss"] == 2.0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "decays again (rewarm 1 of 1), the run ends at step 12" in log and log.count("decays again") == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "decay" in p.name) == ["pre_decay"]
    learnt = run_with_copy_losses(data_dir, tmp_path / "learnt", monkeypatch, {4: 0.3}, {7: 0.5}, **rewarm)
    plain = run_with_copy_losses(data_dir, tmp_path / "plain", monkeypatch, {4: 0.3}, {7: 0.5})
    assert list(learnt) == [1, 2, 3, 4, 5, 6, 7] and learnt == plain  # below the threshold: the run is unchanged


def test_a_decay_that_ends_with_a_weak_second_hop_is_run_again(data_dir, tmp_path, monkeypatch):
    """The second-hop rule scores every held-out conversation of SECOND_HOP's turns (here the test data's four),
    not only the eval_limit probe's, where a decay ends; above its threshold it rewarms as the number rule does."""
    monkeypatch.setattr(sft, "SECOND_HOP", (4, 2))
    real, scored = sft.held_out_loss, []

    def second_hop_at_3(model, held_out, env, autocast_dtype):
        result = real(model, held_out, env, autocast_dtype)
        scored.append((len(held_out.planner.dataset), result["eval_second_hop_loss"]))
        return {**result, "eval_second_hop_loss": 3.0 if held_out.all_second_hops is None else result[
            "eval_second_hop_loss"]}

    monkeypatch.setattr(sft, "held_out_loss", second_hop_at_3)
    rules = dict(rewarm_when_held_out_above=1.0, rewarm_second_hop_above=2.5, eval_limit=2)
    by_step = run_with_copy_losses(data_dir, tmp_path / "run", monkeypatch, {4: 0.3}, {7: 0.5, 12: 0.5}, **rules)
    assert list(by_step) == list(range(1, 13))  # a rewarm at step 7 on the second hop alone (numbers at 0.5 < 1)
    records = metrics(tmp_path / "run")
    assert records[6]["decay_end_second_hop_loss"] == 3.0 and "decay_end_second_hop_loss" not in records[5]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the decay has ended with the second-hop turn at 3.0000, above 2.5; the lr goes back" in log
    held, _ = load_sft_dataset([data_dir / "eval.jsonl"], Tokenizer.from_dir(data_dir / "tok"), cutoff_len=512)
    four_turns = sum(sft._assistant_turn_count(held, i) == 4 for i in range(len(held)))
    assert 0 < four_turns and f"the {four_turns} held-out conversations of 4 turns" in log
    assert {size for size, _ in scored} == {2, four_turns}  # the eval_limit probe and the full second-hop set
    assert all(loss is not None for size, loss in scored if size == four_turns)
    monkeypatch.setattr(sft, "held_out_loss", real)
    low = run_with_copy_losses(data_dir, tmp_path / "low", monkeypatch, {4: 0.3}, {7: 0.5},
                               **{**rules, "rewarm_second_hop_above": 1e6})
    plain = run_with_copy_losses(data_dir, tmp_path / "plain", monkeypatch, {4: 0.3}, {7: 0.5}, eval_limit=2)
    assert list(low) == [1, 2, 3, 4, 5, 6, 7] and low == plain  # under both thresholds: the run is unchanged


def test_a_rewarm_on_the_second_hop_needs_conversations_it_can_score(data_dir, tmp_path):
    """The test data has no conversation of five assistant turns (SECOND_HOP's)."""
    with pytest.raises(run_config.RunConfigError, match="rewarm_second_hop_above=2.5: none of the 8 held-out "
                                                        "conversations .* has 5 assistant turns"):
        run(data_dir, tmp_path / "run", max_steps=10, decay_steps=4, eval_files=[str(data_dir / "eval.jsonl")],
            rewarm_second_hop_above=2.5)
    with pytest.raises(run_config.RunConfigError, match="rewarm_second_hop_above=2.5 needs decay_steps"):
        run(data_dir, tmp_path / "run", max_steps=10, eval_files=[str(data_dir / "eval.jsonl")],
            rewarm_second_hop_above=2.5)


def test_a_run_resumed_inside_a_rewarm_equals_an_uninterrupted_one(data_dir, tmp_path, monkeypatch):
    numbers, rewarm = {7: 2.0}, dict(rewarm_when_held_out_above=1.0)
    reference = run_with_copy_losses(data_dir, tmp_path / "reference", monkeypatch, {4: 0.3}, numbers, **rewarm)
    monkeypatch.undo()
    run_dir = tmp_path / "crashed"
    crash_in_step(monkeypatch, 10)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with_copy_losses(data_dir, run_dir, monkeypatch, {4: 0.3}, numbers, checkpoint_every=8, **rewarm)
    monkeypatch.undo()
    resumed = run_with_copy_losses(data_dir, run_dir, monkeypatch, {}, {}, checkpoint_every=8, **rewarm)
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert list(resumed) == list(reference) == list(range(1, 13))
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6)


def test_a_run_stopped_where_its_decay_ends_continues_into_the_rewarm(data_dir, tmp_path, monkeypatch):
    numbers, rewarm = {7: 2.0}, dict(rewarm_when_held_out_above=1.0)
    reference = run_with_copy_losses(data_dir, tmp_path / "reference", monkeypatch, {4: 0.3}, numbers, **rewarm)
    run_dir = tmp_path / "stopped"
    stopped = run_with_copy_losses(data_dir, run_dir, monkeypatch, {4: 0.3}, numbers, stop_after_steps=7, **rewarm)
    assert list(stopped) == list(range(1, 8))
    continued = run_with_copy_losses(data_dir, run_dir, monkeypatch, {}, {}, **rewarm)
    assert list(continued) == list(reference) == list(range(1, 13))
    for step in reference:
        assert continued[step] == pytest.approx(reference[step], abs=1e-6)


def test_a_run_continued_with_a_lower_rewarm_peak_rewarms_to_it(data_dir, tmp_path, monkeypatch):
    numbers, rewarm = {7: 2.0}, dict(rewarm_when_held_out_above=1.0)
    run_dir = tmp_path / "stopped"
    run_with_copy_losses(data_dir, run_dir, monkeypatch, {4: 0.3}, numbers, stop_after_steps=7, **rewarm)
    # the stopped run took the rewarm at step 7 at the full peak; its continuation climbs to this config's height
    run_with_copy_losses(data_dir, run_dir, monkeypatch, {}, {}, rewarm_peak_ratio=0.5, **rewarm)
    lr = {r["step"]: r["lr"] for r in metrics(run_dir) if "lr" in r}
    assert max(lr[s] for s in range(8, 13)) == pytest.approx(0.5 * max(lr[s] for s in range(1, 8)))


def test_a_rewarm_needs_a_decay_and_a_held_out_set(data_dir, tmp_path):
    with pytest.raises(run_config.RunConfigError, match="needs decay_steps, eval_files"):
        run(data_dir, tmp_path / "run", max_steps=10, rewarm_when_held_out_above=0.5)
    with pytest.raises(run_config.RunConfigError, match="needs max_rewarms"):
        run(data_dir, tmp_path / "run", max_steps=10, decay_steps=4, eval_files=[str(data_dir / "eval.jsonl")],
            rewarm_when_held_out_above=0.5, max_rewarms=0)
    with pytest.raises(run_config.RunConfigError, match="rewarm_probe"):
        run(data_dir, tmp_path / "run", max_steps=10, rewarm_probe="eval_digits")


def test_held_out_losses_are_token_means_over_their_kinds_of_target(data_dir):
    """held_out_loss on a packed evaluation step against each conversation scored alone: all supervised targets,
    the digit targets, and the copy targets (no pair known from training: every pair seen earlier in its
    conversation) with the rest."""
    tok = Tokenizer.from_dir(data_dir / "tok")
    held, _ = load_sft_dataset([data_dir / "eval.jsonl"], tok, cutoff_len=512)
    known = sft.token_pairs(held.tokens[:0], held.tokens[:0])
    numbers = sft.number_tokens(tok)
    planner = BatchPlanner(held, global_batch=len(held), unit="sequences", pack_tokens=1024, seed=0)
    model = random_model(small_config(vocab_size=tok.vocab_size)).eval()
    # the third of four assistant turns (conversations of three tool calls) for the second-hop probe
    result = sft.held_out_loss(model, sft.HeldOut(planner, known, numbers, second_hop=(4, 2)), DistEnv(), None)
    nll, number, copy, third_turns = [], [], [], []
    with torch.no_grad():
        for i in range(len(held)):
            tokens, labels = held.document(i)
            doc = pack_documents(held, [i])
            supervised = labels[1:].astype(bool)
            logprobs = model(doc.input_ids, doc.positions, targets=doc.targets)
            nll.append(-logprobs[torch.from_numpy(supervised)])
            number.append(torch.from_numpy(numbers[tokens[1:][supervised]]))
            copy.append(sft.copy_targets(doc, known)[torch.from_numpy(supervised)])
            turns = [list(run) for flag, run in itertools.groupby(range(len(supervised)), key=supervised.__getitem__)
                     if flag]
            if len(turns) == 4:
                third_turns.append(-logprobs[turns[2]].double().sum().item())
    nll, number, copy = torch.cat(nll).double(), torch.cat(number), torch.cat(copy)
    assert 0 < number.sum() < len(number) and 0 < copy.sum() < len(copy) and 0 < len(third_turns) < len(held)
    assert result["eval_second_hop_loss"] == pytest.approx(sum(third_turns) / len(third_turns), rel=1e-5)
    assert result["eval_loss"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert result["eval_number_loss"] == pytest.approx(nll[number].mean().item(), rel=1e-5)
    assert result["eval_copy_loss"] == pytest.approx(nll[copy].mean().item(), rel=1e-5)
    assert result["eval_other_loss"] == pytest.approx(nll[~copy].mean().item(), rel=1e-5)
    assert result["eval_copy_share"] == pytest.approx(copy.double().mean().item())


def test_assistant_turns_are_runs_of_supervised_positions_per_document():
    # two packed documents of 10 and 6 tokens; supervised positions 2-3 and 6-8 in the first, 12 and 14-15 in the second
    supervised = numpy.array([2, 3, 6, 7, 8, 12, 14, 15])
    first, second = sft.assistant_turns(supervised, [10, 6])
    assert [t.tolist() for t in first] == [[0, 1], [2, 3, 4]]
    assert [t.tolist() for t in second] == [[5], [6, 7]]
    # a turn never runs across two documents, even when their supervised positions touch
    assert [[t.tolist() for t in d] for d in sft.assistant_turns(numpy.array([8, 9, 10]), [10, 6])] == \
        [[[0, 1]], [[2]]]
    assert sft.assistant_turns(numpy.array([], dtype=int), [4]) == [[]]


def test_number_tokens_are_the_digit_tokens(data_dir):
    tok = Tokenizer.from_dir(data_dir / "tok")
    flags = sft.number_tokens(tok)
    assert len(flags) == tok.vocab_size and flags.any()
    for i in range(tok.vocab_size):
        text = tok.decode([i]).lstrip(" ")
        assert flags[i] == (text != "" and all(c in "0123456789" for c in text)), repr(text)
    assert all(flags[tok.encode(" founded Ixo in 1907.")[-3:-1]]) and not any(flags[tok.encode(" Kara Voss")])


def test_exports_during_the_decay_must_be_steps_inside_it(tmp_path):
    for bad in ([0], [3], [-1], [True]):
        with pytest.raises(run_config.RunConfigError, match="export_during_decay"):
            sft.SFTConfig(run_dir=str(tmp_path), decay_steps=3, export_during_decay=bad)


def test_a_resumed_run_keeps_the_decay_decision(data_dir, tmp_path, monkeypatch):
    reference = run_with_copy_losses(data_dir, tmp_path / "reference", monkeypatch, {4: 0.3})
    monkeypatch.undo()
    run_dir = tmp_path / "crashed"
    crash_in_step(monkeypatch, 6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with_copy_losses(data_dir, run_dir, monkeypatch, {4: 0.3}, checkpoint_every=5)
    monkeypatch.undo()
    resumed = run_with_copy_losses(data_dir, run_dir, monkeypatch, {}, checkpoint_every=5)  # no second trigger
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert list(resumed) == list(reference) == [1, 2, 3, 4, 5, 6, 7]
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6)


def test_decay_on_copy_loss_needs_its_probe(data_dir, tmp_path):
    with pytest.raises(run_config.RunConfigError, match="needs decay_steps, eval_files, eval_every"):
        run(data_dir, tmp_path / "run", max_steps=10, decay_when_held_out_below=0.5)


def test_eval_limit_takes_the_first_conversations(data_dir, tmp_path):
    run(data_dir, tmp_path / "run", max_steps=1, export=False, eval_files=[str(data_dir / "eval.jsonl")],
        eval_limit=3)
    assert "the first 3 are used" in (tmp_path / "run" / "train.log").read_text()
    last = metrics(tmp_path / "run")[-1]
    assert last["eval_copy_share"] >= 0 and last["eval_number_loss"] > 0


def test_eval_limit_can_spread_its_pick_through_the_files(data_dir, tmp_path):
    """eval_pick="spread": evenly spaced conversations (a file of 180 direct then 120 2-hop ones gives 2-hop ones
    their share), each document whole."""
    assert sft.eval_indices(300, 4, "first").tolist() == [0, 1, 2, 3]
    assert sft.eval_indices(300, 4, "spread").tolist() == [0, 75, 150, 225]
    assert sft.eval_indices(300, 64, "spread")[[37, 38]].tolist() == [173, 178]  # 25 of 64 among the last 120
    tok = Tokenizer.from_dir(data_dir / "tok")
    held, _ = load_sft_dataset([data_dir / "eval.jsonl"], tok, cutoff_len=512)
    picked = held.subset([5, 1])
    assert len(picked) == 2 and picked.sources == [held.sources[5], held.sources[1]]
    for i, original in enumerate([5, 1]):
        for got, want in zip(picked.document(i), held.document(original)):
            numpy.testing.assert_array_equal(got, want)
    run(data_dir, tmp_path / "run", max_steps=1, export=False, eval_files=[str(data_dir / "eval.jsonl")],
        eval_limit=3, eval_pick="spread")
    assert "evenly spaced, 3 are used" in (tmp_path / "run" / "train.log").read_text()
    with pytest.raises(run_config.RunConfigError, match="eval_pick"):
        run(data_dir, tmp_path / "bad", max_steps=1, eval_pick="last")


def test_a_schedule_on_the_second_hop_probe_needs_conversations_it_can_score(data_dir, tmp_path):
    """The test data has no conversation of five assistant turns: a rewarm on eval_second_hop_loss could never fire."""
    with pytest.raises(run_config.RunConfigError, match="rewarm_probe=eval_second_hop_loss: none of the 8 held-out "
                                                        "conversations .* has 5 assistant turns"):
        run(data_dir, tmp_path / "run", max_steps=10, decay_steps=4, eval_files=[str(data_dir / "eval.jsonl")],
            rewarm_when_held_out_above=2.5, rewarm_probe="eval_second_hop_loss")


def test_step_flops_counts_matmuls_and_causal_attention():
    config = small_config()
    matmul = 6 * config.num_parameters() * 10
    attention = 6 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * (36 + 16)
    assert sft.step_flops(config, [6, 4]) == matmul + attention


def test_timed_schedule_warms_up_then_decays_over_the_budget():
    schedule = sft.TimedWarmupCosine(budget_s=100.0, warmup_ratio=0.1, min_ratio=0.1)

    def at(seconds):
        schedule.elapsed_s = seconds
        return schedule(step=12345)  # the step does not matter, only the elapsed time

    assert at(0) == 0.01 and at(5) == pytest.approx(0.5) and at(10) == pytest.approx(1.0)
    assert at(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert at(100) == pytest.approx(0.1) and at(250) == pytest.approx(0.1)
    values = [at(s) for s in range(10, 101, 5)]
    assert all(a > b for a, b in zip(values, values[1:]))


class StepClock:
    """A perf_counter that stands still except while a step fetches its batch: every step takes `step_s`."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 1000.0, step_s

    def perf_counter(self):
        return self.now

    def time(self):
        return self.now

    def wrap(self, batch):
        def timed_batch(*args, **kwargs):
            self.now += self.step_s
            return batch(*args, **kwargs)
        return timed_batch


def budget_run(data_dir, run_dir, monkeypatch, **settings):
    clock = StepClock(step_s=10.0)
    monkeypatch.setattr(sft, "time", clock)
    monkeypatch.setattr(BatchPlanner, "batch", clock.wrap(BatchPlanner.batch))
    by_step = run(data_dir, run_dir, budget_minutes=1.0, epochs=100.0, export=False, **settings)
    monkeypatch.undo()
    records = metrics(run_dir)
    return by_step, records


def test_a_time_budget_sets_the_schedule_and_stops_the_run(data_dir, tmp_path, monkeypatch):
    # step n ends at 10 * n seconds, which sets the lr of step n + 1; the sixth step spends the 60-second budget
    by_step, records = budget_run(data_dir, tmp_path / "run", monkeypatch)
    assert list(by_step) == [1, 2, 3, 4, 5, 6]
    schedule = sft.TimedWarmupCosine(60.0, warmup_ratio=0.2, min_ratio=0.0)
    for record in records:
        schedule.elapsed_s = 10.0 * (record["step"] - 1)
        assert record["lr"] == pytest.approx(3e-3 * schedule(0))
        assert record["train_s"] == 10.0 * record["step"]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "1 minutes (at most 500 steps)" in log and "step 6 | loss" in log and "0:01:00 of 0:01:00" in log


def test_a_resumed_time_budget_counts_the_time_already_spent(data_dir, tmp_path, monkeypatch):
    reference, _ = budget_run(data_dir, tmp_path / "reference", monkeypatch)
    run_dir = tmp_path / "crashed"
    crash_in_step(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        budget_run(data_dir, run_dir, monkeypatch, checkpoint_every=2)
    monkeypatch.undo()
    resumed, records = budget_run(data_dir, run_dir, monkeypatch, checkpoint_every=2)
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert list(resumed) == list(reference) == [1, 2, 3, 4, 5, 6]
    assert [r["train_s"] for r in records if r["step"] > 4] == [50.0, 60.0]
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6)


def assert_micro_step_objective(data_dir, options, objective):
    """On one packed batch, micro_step(**options(number of targets)) has the gradients of
    0.01 * objective(nll, weights, those options) and returns the unweighted supervised sum."""
    tok = Tokenizer.from_dir(data_dir / "tok")
    dataset, _ = load_sft_dataset([data_dir / "train.jsonl"], tok, cutoff_len=512)
    (packed,) = BatchPlanner(dataset, global_batch=4, unit="sequences", pack_tokens=4096, seed=0).batch(
        DataPosition()).micro_batches
    assert 0 < packed.weights.sum() < len(packed.weights)
    settings = options(len(packed.targets))
    model = random_model(small_config(vocab_size=tok.vocab_size)).train()
    model.zero_grad()
    returned = sft.micro_step(model, packed, 0.01, torch.device("cpu"), None, **settings)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    hidden = model(packed.input_ids, packed.positions, seqlens=packed.seqlens)
    nll = -torch.log_softmax(model.logits(hidden).float(), -1).gather(1, packed.targets[:, None])[:, 0]
    (0.01 * objective(nll, packed.weights, settings)).backward()
    assert returned.item() == pytest.approx((nll * packed.weights).sum().item(), rel=1e-5)
    for got, want in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_context_loss_weight_adds_the_other_targets_to_the_objective_only(data_dir):
    assert_micro_step_objective(data_dir, lambda n: dict(context_weight=0.3),
                                lambda nll, w, _: (nll * w).sum() + 0.3 * (nll * (1 - w)).sum())


def test_context_skip_leaves_those_targets_out_of_the_context_loss_only(data_dir):
    # supervised and context targets alike are flagged; the returned sum is still the whole supervised one
    assert_micro_step_objective(
        data_dir, lambda n: dict(context_weight=0.3, context_skip=torch.arange(n) % 3 == 0),
        lambda nll, w, o: (nll * w).sum() + 0.3 * (nll * (1 - w) * ~o["context_skip"]).sum())


def record_micro_steps(monkeypatch) -> list:
    """(micro-batch, context_skip, target_scale) of every micro_step the trainer makes."""
    real, seen = sft.micro_step, []

    def recording(model, batch, scale, device, autocast_dtype, context_weight=0.0, context_skip=None,
                  target_scale=None):
        seen.append((batch, context_skip, target_scale))
        return real(model, batch, scale, device, autocast_dtype, context_weight, context_skip, target_scale)
    monkeypatch.setattr(sft, "micro_step", recording)
    return seen


def test_context_loss_new_numbers_false_skips_the_new_numbers_of_each_micro_batch(data_dir, tmp_path, monkeypatch):
    seen = record_micro_steps(monkeypatch)
    run(data_dir, tmp_path / "default", max_steps=1, export=False, context_loss_weight=0.5)
    assert seen[0][1] is None
    seen.clear()
    run(data_dir, tmp_path / "skip", max_steps=1, export=False, context_loss_weight=0.5,
        context_loss_new_numbers=False)
    digits = sft.number_tokens(Tokenizer.from_dir(data_dir / "tok"))
    assert seen and all(torch.equal(skip, sft.number_targets(batch, digits)[0]) for batch, skip, _ in seen)


def test_target_scale_weighs_each_term_of_the_objective_and_not_the_returned_loss(data_dir):
    assert_micro_step_objective(
        data_dir, lambda n: dict(context_weight=0.3, target_scale=1 + 4.0 * (torch.arange(n) % 5 == 0)),
        lambda nll, w, o: (nll * o["target_scale"] * w).sum() + 0.3 * (nll * o["target_scale"] * (1 - w)).sum())


def test_number_copy_weight_scales_the_number_copies_of_each_micro_batch(data_dir, tmp_path, monkeypatch):
    seen = record_micro_steps(monkeypatch)
    run(data_dir, tmp_path / "default", max_steps=1, export=False, context_loss_weight=0.5)
    assert seen[0][2] is None
    seen.clear()
    run(data_dir, tmp_path / "weighted", max_steps=1, export=False, context_loss_weight=0.5, number_copy_weight=3.0)
    digits = sft.number_tokens(Tokenizer.from_dir(data_dir / "tok"))
    assert seen and all(torch.equal(scale, 1 + 2 * sft.number_targets(batch, digits)[1].float())
                        for batch, _, scale in seen)
    assert any(scale.max() == 3 for _, _, scale in seen)
    with pytest.raises(run_config.RunConfigError, match="number_copy_weight"):
        sft.SFTConfig(number_copy_weight=0)


def test_a_padding_micro_batch_adds_no_gradient_with_the_context_loss(data_dir):
    tok = Tokenizer.from_dir(data_dir / "tok")
    dataset, _ = load_sft_dataset([data_dir / "train.jsonl"], tok, cutoff_len=512)
    model = random_model(small_config(vocab_size=tok.vocab_size)).train()
    returned = sft.micro_step(model, pack_documents(dataset, []), 1.0, torch.device("cpu"), None, context_weight=0.5)
    assert returned.item() == 0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_a_run_with_context_loss_logs_the_supervised_loss(data_dir, tmp_path):
    plain = run(data_dir, tmp_path / "plain", max_steps=2, export=False)
    context = run(data_dir, tmp_path / "context", max_steps=2, export=False, context_loss_weight=0.5)
    assert context[1] == pytest.approx(plain[1], abs=1e-6)  # the same weights score the same tokens
    assert context[2] != pytest.approx(plain[2], abs=1e-4)  # a different objective took the first update


def test_bf16_needs_torch_to_use_the_cpus_bf16_instructions(monkeypatch):
    from litere import cpu
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not cpu.has_bf16()


@pytest.mark.parametrize("bf16,precision,compiled", [(True, "auto", True), (False, "auto", False),
                                                     (True, "fp32", False)])
def test_compile_blocks_auto_compiles_where_training_runs_under_bf16_autocast(monkeypatch, bf16, precision, compiled):
    from litere import cpu
    from litere.train.core import blocks_compiled
    monkeypatch.setattr(cpu, "has_bf16", lambda: bf16)
    cfg = run_config.load(sft.SFTConfig, None, ["compile_blocks=auto", f"precision={precision}"])
    assert blocks_compiled(cfg, DistEnv()) is compiled
    assert blocks_compiled(dataclasses.replace(cfg, compile_blocks=True), DistEnv())
    assert not blocks_compiled(dataclasses.replace(cfg, compile_blocks=False), DistEnv())


def test_recall_drills_list_keys_and_two_token_values_then_recall_them_in_another_order():
    keys, values = numpy.arange(100, 140), numpy.arange(10, 20)
    drills = recall_drills(5, keys, values, separator=7, entries=6, seed=3)
    assert len(drills) == 5 and set(drills.lengths) == {48} and not drills.labels.any()
    for i in range(5):
        lines = drills.document(i)[0].reshape(12, 4)
        first, again = lines[:6], lines[6:]
        assert (lines[:, 3] == 7).all() and numpy.isin(lines[:, 0], keys).all() and numpy.isin(lines[:, 1:3], values).all()
        assert len(set(first[:, 0])) == 6  # distinct keys: each recall has one answer
        assert sorted(map(tuple, first)) == sorted(map(tuple, again)) and not (first == again).all()
    assert numpy.array_equal(drills.tokens, recall_drills(5, keys, values, 7, entries=6, seed=3).tokens)
    assert not numpy.array_equal(drills.tokens, recall_drills(5, keys, values, 7, entries=6, seed=4).tokens)
    with pytest.raises(ValueError, match="6 distinct keys"):
        recall_drills(1, keys[:5], values, 7, entries=6)


def test_recall_drills_join_the_training_data_and_not_the_copy_probe(data_dir, tmp_path):
    conversations = write_conversations(tmp_path / "train.jsonl", 40, seed=0)
    tokenizer = train_tokenizer((render(c) for c in conversations), 400, tmp_path / "tok", digit_pairs=True)
    settings = dict(tokenizer=str(tmp_path / "tok"), eval_files=[str(data_dir / "eval.jsonl")],
                    train_files=[str(tmp_path / "train.jsonl")], context_loss_weight=0.5)
    plain = run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, **settings))
    drilled = run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, recall_drills=30, **settings))
    logged = []
    log = type("Log", (), {"info": staticmethod(logged.append)})
    (planner, held_out), (drilled_planner, drilled_held_out) = (sft._load_data(c, tokenizer, log) for c in (plain, drilled))
    dataset, with_drills = planner.dataset, drilled_planner.dataset
    assert len(with_drills) == len(dataset) + 30 and with_drills.sources[-1] == "recall drill 29"
    assert numpy.array_equal(with_drills.tokens[:len(dataset.tokens)], dataset.tokens)
    assert numpy.array_equal(held_out.known_pairs, drilled_held_out.known_pairs)
    assert any(line.startswith("recall drills: 30 documents of 128 tokens") for line in logged)
    with pytest.raises(run_config.RunConfigError, match="recall_drills=30 needs context_loss_weight"):
        sft.SFTConfig(recall_drills=30)
    with pytest.raises(run_config.RunConfigError, match="the 100 two-digit tokens"):
        sft.drill_tokens(Tokenizer.from_dir(data_dir / "tok"))
