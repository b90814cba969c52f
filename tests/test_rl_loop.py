"""The RL stages end to end on CPU: a toy task learnt from rewards alone (GRPO and PPO), on-policy identities,
trainer = sampler logprobs, weight sync, 2 processes = 1, killed and resumed = uninterrupted, bad input."""
import json

import pytest
import torch

from litere import run_config
from litere.agent import Trajectory
from litere.rl import batch as batching
from litere.rl import loop
from litere.rl.config import RLConfig
from litere.rl.sync import RolloutWeights
from litere.sampler import Sampler, SamplingParams
from litere.train.distributed import DistEnv
from litere.weights import load_model
from model_utils import random_model, small_config
from rl_helpers import make_toy, metrics, rl_config, rl_overrides
from sft_helpers import REPO, run_python


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp("toy"))


# --- learning ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_small_policy_learns_the_rewarded_word(toy, tmp_path, algo):
    extra = dict(critic_lr=3e-3, lam=1.0, gamma=1.0) if algo == "ppo" else {}
    loop.train(rl_config(toy, run_dir=str(tmp_path), algo=algo, max_steps=30, lr=1e-3, export=False,
                         probe_questions=[str(toy / "questions.jsonl")], probe_every=5, **extra))
    start, *steps = metrics(tmp_path)
    rewards = [m["reward_mean"] for m in steps]
    assert 0.05 < rewards[0] < 0.45, rewards  # the start model says "yes" about 20% of the time
    assert max(rewards[-3:]) > 0.9, rewards
    assert start.pop("probe_s") > 0 and steps[-1]["probe_s"] > 0  # timed apart from the step's own split
    assert start == {"step": 0, "probe": {"toy": 0.0, "all": 0.0}}  # greedy, the start model says "no"
    # the greedy answer of a policy that samples "yes" 90% of the time can still tip either way from one probe to
    # the next (on one machine 1.0 at step 15 and 0.44 at step 30, on another 1.0 at both): some probe solves all
    probes = [m["probe"] for m in steps if "probe" in m]
    assert len(probes) == 6 and {"toy": 1.0, "all": 1.0} in probes, probes


def test_the_probe_has_its_own_response_budget_and_leaves_training_alone(toy, tmp_path, monkeypatch):
    from litere import evaluation

    budgets = []

    def recording(*args, config, **kwargs):
        budgets.append(config.max_response_tokens)
        return evaluate(*args, config=config, **kwargs)

    evaluate = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", recording)
    run = dict(max_steps=2, export=False, probe_questions=[str(toy / "questions.jsonl")], probe_every=1)
    loop.train(rl_config(toy, run_dir=str(tmp_path / "own"), probe_max_response_tokens=3, **run))
    assert budgets == [3, 3, 3]
    loop.train(rl_config(toy, run_dir=str(tmp_path / "same"), **run))
    assert budgets[3:] == [rl_config(toy).max_response_tokens] * 3
    trained = ("reward_mean", "response_tokens_mean", "trained_tokens", "policy_loss", "grad_norm", "entropy")
    for a, b in zip(metrics(tmp_path / "own")[1:], metrics(tmp_path / "same")[1:], strict=True):
        assert {k: a[k] for k in trained} == {k: b[k] for k in trained}


@pytest.mark.parametrize("compile_blocks", [False, True])  # compiled, the update's blocks differ from the sampler's
def test_on_policy_step_has_ratio_one_and_no_importance_correction(toy, tmp_path, compile_blocks):
    loop.train(rl_config(toy, run_dir=str(tmp_path), max_steps=2, export=False, compile_blocks=compile_blocks))
    for m in metrics(tmp_path):
        assert m["ratio_mean"] == 1.0  # π_old is the update's own forward, detached
        assert m["clip_low_fraction"] == m["clip_high_fraction"] == m["dual_clip_fraction"] == 0
        assert m["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4) and m["veto_fraction"] == 0
        assert m["logprob_diff_max"] < 1e-4
        assert set(m["seconds"]) == {"weight_sync", "rollout", "reward", "update"}


@pytest.mark.parametrize("settings", [{}, {"rollout_dtype": "bf16", "tis_cap": 1.002, "tis_veto": 0.99}])
def test_taking_pi_old_from_the_update_trains_as_a_pass_of_its_own(toy, tmp_path, monkeypatch, settings):
    """One optimizer step per batch and nothing else scored: the update's forward gives π_old and the TIS weights
    (second case: bf16 rollouts, so that weights differ from 1, some are capped and some sequences vetoed). The
    same run with the no-grad pass."""
    run = dict(max_steps=3, **settings)
    loop.train(rl_config(toy, run_dir=str(tmp_path / "fused"), **run))
    monkeypatch.setattr(loop.RLRun, "old_from_update", property(lambda self: False))
    loop.train(rl_config(toy, run_dir=str(tmp_path / "pass"), **run))
    fused, separate = metrics(tmp_path / "fused")[1:], metrics(tmp_path / "pass")[1:]
    assert all("old_logprobs" in m["seconds"] for m in separate)
    assert not settings or any(m["veto_fraction"] > 0 for m in fused)
    for a, b in zip(fused, separate, strict=True):
        assert a["reward_mean"] == b["reward_mean"] and a["trained_tokens"] == b["trained_tokens"]
        for key in ("policy_loss", "grad_norm", "tis_weight_mean", "veto_fraction", "logprob_diff_mean",
                    "ratio_mean", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    one = load_model(tmp_path / "fused" / "final", dtype=torch.float32)
    two = load_model(tmp_path / "pass" / "final", dtype=torch.float32)
    for (key, x), y in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-5, msg=key)


# --- trainer and sampler agree -----------------------------------------------------------------------------------
def multi_turn_trajectories(model, turns: int = 3) -> list[Trajectory]:
    """Trajectories of the real sampler: sampled turns interleaved with forced segments (as tool responses are)."""
    sampler = Sampler(model, max_cache_tokens=4096, seed=0)
    params = SamplingParams(temperature=0.8, max_new_tokens=12, stop_token_ids=())
    gen = torch.Generator().manual_seed(5)
    out = []
    for q in range(3):
        prompt = torch.randint(0, model.config.vocab_size, (7 + q,), generator=gen).tolist()
        ids = sampler.add(prompt, params, n=2, resumable=True)
        trajectories = {rid: Trajectory(f"q{q}", i, "", [""], None, prompt) for i, rid in enumerate(ids)}
        for turn in range(turns):
            finished = {}
            while len(finished) < len(ids):
                for o in sampler.step():
                    finished[o.request_id] = o
            for rid, o in finished.items():
                t = trajectories[rid]
                t.response_ids += o.token_ids
                t.response_mask += [1] * len(o.token_ids)
                t.rollout_logprobs += o.logprobs
                if turn + 1 < turns:
                    forced = torch.randint(0, model.config.vocab_size, (5,), generator=gen).tolist()
                    t.response_ids += forced
                    t.response_mask += [0] * len(forced)
                    t.rollout_logprobs += [0.0] * len(forced)
                    sampler.extend(rid, forced, params)
        for rid in ids:
            sampler.release(rid)
        out += trajectories.values()
    return out


def trainer_logprobs(model, trajectories, temperature=0.8) -> list[torch.Tensor]:
    samples = [batching.to_sample(t) for t in trajectories]
    mb = batching.micro_batch(samples, list(range(len(samples))), torch.device("cpu"))
    with torch.no_grad():
        logprobs = batching.sampled_logprobs(model, mb, temperature)
    mb.scatter(samples, "old", logprobs)
    return samples


def test_trainer_logprobs_of_sampled_tokens_equal_the_samplers():
    model = random_model(small_config(vocab_size=64))
    trajectories = multi_turn_trajectories(model)
    for sample in trainer_logprobs(model, trajectories):
        assert sample.num_loss_tokens == 36
        torch.testing.assert_close(sample.values["old"], sample.values["rollout"], atol=1e-5, rtol=0)


def test_rollout_weights_copy_follows_the_policy():
    policy = random_model(small_config(vocab_size=64)).double().train()
    copy = RolloutWeights(policy, DistEnv(), torch.float32)  # another dtype: a copy, refreshed each step
    assert not copy.shared and copy.model is not policy
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    copy.refresh(policy)
    for (name, a), b in zip(policy.state_dict().items(), copy.model.state_dict().values()):
        torch.testing.assert_close(b, a.float(), msg=name)
    trajectories = multi_turn_trajectories(copy.model, turns=2)
    for sample in trainer_logprobs(policy, trajectories):
        torch.testing.assert_close(sample.values["old"], sample.values["rollout"], atol=1e-5, rtol=0)


# --- distribution and resume -------------------------------------------------------------------------------------
def run_train(args, nproc=0):
    return run_python([str(REPO / "train.py"), *args], nproc, timeout=600)


@pytest.mark.parametrize("questions", [3, 1])
def test_two_processes_give_the_step_of_one(toy, tmp_path, questions):
    """3 questions per step over 2 ranks: uneven groups; 1: a rank with no sample at all, whose metrics must still
    meet the other rank's. The same rewards, losses, grad norms and weights."""
    settings = dict(prompts_per_step=questions, max_steps=2, mini_batches=2, pack_tokens=256)
    loop.train(rl_config(toy, run_dir=str(tmp_path / "one"), **settings))
    result = run_train(["--stage", "rl1", *rl_overrides(toy, run_dir=str(tmp_path / "two"), **settings)], nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert a["reward_mean"] == b["reward_mean"] and a["trained_tokens"] == b["trained_tokens"]
        for key in ("policy_loss", "grad_norm", "ratio_mean", "tis_weight_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    one = load_model(tmp_path / "one" / "final", dtype=torch.float32)
    two = load_model(tmp_path / "two" / "final", dtype=torch.float32)
    for (key, x), y in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4, msg=key)


def test_killed_and_resumed_run_equals_an_uninterrupted_one(toy, tmp_path, monkeypatch):
    settings = dict(max_steps=4, checkpoint_every=2, export=False)
    loop.train(rl_config(toy, run_dir=str(tmp_path / "whole"), **settings))
    real_step, calls = loop.optimizer_step, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # in step 4, after the checkpoint of step 2 and the record of step 3
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop.train(rl_config(toy, run_dir=str(tmp_path / "resumed"), **settings))
    monkeypatch.setattr(loop, "optimizer_step", real_step)
    loop.train(rl_config(toy, run_dir=str(tmp_path / "resumed"), **settings))
    whole, resumed = metrics(tmp_path / "whole"), metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(whole, resumed):
        assert a["reward_mean"] == b["reward_mean"]
        assert b["policy_loss"] == pytest.approx(a["policy_loss"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-6)


def test_every_step_dumps_its_trajectories_with_rewards_and_advantages(toy, tmp_path):
    import gzip

    loop.train(rl_config(toy, run_dir=str(tmp_path), max_steps=1, dump_rollouts=True, export=False))
    with gzip.open(tmp_path / "rollouts" / "step_1.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 4 * 8
    assert {r["policy_version"] for r in records} == {0}
    assert all(r["reward"] in (0.0, 1.0) and "advantage" in r and r["sampling"]["temperature"] == 1.0
               for r in records)


def test_balanced_sources_give_every_step_an_equal_share_of_each_source_and_resume_in_order(toy, tmp_path):
    import gzip

    rows = [json.loads(line) for line in (toy / "questions.jsonl").read_text().splitlines()]
    mixed = tmp_path / "mixed.jsonl"  # 12 questions of source a, 4 of source b
    mixed.write_text("".join(json.dumps({**r, "data_source": "a" if i < 12 else "b"}) + "\n"
                             for i, r in enumerate(rows)))

    def step_questions(run_dir):
        out = []
        for step in (1, 2, 3):
            with gzip.open(run_dir / "rollouts" / f"step_{step}.jsonl.gz", "rt") as f:
                out.append(sorted({(r["data_source"], r["question_id"]) for r in map(json.loads, f)}))
        return out

    settings = dict(questions=[str(mixed)], balance_sources=True, max_steps=3, dump_rollouts=True, export=False,
                    samples_per_prompt=2, max_response_tokens=24)
    loop.train(rl_config(toy, run_dir=str(tmp_path / "whole"), **settings))
    whole = step_questions(tmp_path / "whole")
    assert all([source for source, _ in step] == ["a", "a", "b", "b"] for step in whole)
    assert len({q for step in whole for source, q in step if source == "b"}) == 4  # b's 4, none repeated early
    loop.train(rl_config(toy, run_dir=str(tmp_path / "resumed"), stop_after_steps=1, **settings))
    loop.train(rl_config(toy, run_dir=str(tmp_path / "resumed"), **settings))
    assert step_questions(tmp_path / "resumed") == whole
    assert [m["step"] for m in metrics(tmp_path / "resumed")] == [1, 2, 3]


# --- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("temperature=0", "greedy"),
    ("samples_per_prompt=1", "at least 2"),
    ("loss_agg=token-sum", "loss_agg"),
    ("probe_max_response_tokens=-1", "probe_max_response_tokens=-1 must be >= 0"),
])
def test_bad_settings_are_refused(toy, override, message):
    with pytest.raises(run_config.RunConfigError, match=message):
        run_config.load(RLConfig, None, [*rl_overrides(toy), override])


def test_a_batch_larger_than_the_question_set_is_refused(toy, tmp_path):
    with pytest.raises(run_config.RunConfigError, match="larger than the question set"):
        loop.train(rl_config(toy, run_dir=str(tmp_path), prompts_per_step=17))


def test_question_rows_without_answers_stop_the_run_with_file_and_line(toy, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "Q?", "answers": ["x"]}\n{"id": "b", "question": "Q2?"}\n')
    result = run_train(["--stage", "rl1", *rl_overrides(toy, run_dir=str(tmp_path / "run"), questions=[str(bad)])])
    assert result.returncode == 2 and f"{bad}:2: missing key 'answers'" in result.stderr


def test_an_unreachable_judge_falls_back_and_is_counted(toy, tmp_path):
    loop.train(rl_config(toy, run_dir=str(tmp_path), max_steps=1, export=False, judge="llm",
                         judge_url="http://127.0.0.1:9", judge_model="m", judge_retries=0, judge_timeout=2.0))
    [m] = metrics(tmp_path)
    answered = sum(m["judge"].values()) - m["judge"].get("no_answer", 0)
    assert answered > 0 and m["judge"].get("exact_match_fallback", 0) == answered == m["judge_errors"]


def test_a_step_whose_every_trajectory_fails_stops_the_run(toy, tmp_path):
    bad = tmp_path / "no_env.jsonl"
    bad.write_text("".join(json.dumps({"id": f"x{i}", "question": "Say a word.", "answers": ["yes"]}) + "\n"
                           for i in range(4)))
    with pytest.raises(RuntimeError, match="step 1: every trajectory ended in an error, e.g. no environment"):
        loop.train(rl_config(toy, run_dir=str(tmp_path / "run"), questions=[str(bad)], max_steps=1))
