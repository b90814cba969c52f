"""The main job end to end on a small world with a few training steps of a smaller model (a smoke test: the
accuracy of so short a run is not checked, the pipeline and its reports are): world -> data -> tokenizer -> SFT ->
evaluation -> curriculum filter -> RL -> evaluation, each stage reused when done and the RL run resumed when
stopped or killed."""
import dataclasses
import json
import multiprocessing
import shutil
import sys

import pytest
import torch

from litere import demo
from litere.agent import WorkerPool, read_trajectories
from litere.rl import loop
from litere.tokenizer import Tokenizer
from litere.train import sft
from litere.viewer import read_records

FAST = ["max_steps=3", "global_batch=2048", "pack_tokens=2048", "arch.num_hidden_layers=1",
        "arch.hidden_size=64", "arch.intermediate_size=128", "arch.head_dim=16", "threads=1"]
SIZES = ["--held-out-questions", "4", "--training-questions", "3"]
TYPES = {"direct", "2-hop", "3-hop", "all"}


def run_demo(out, capsys, *args) -> str:
    assert demo.main(["--quick", "--out", str(out), *args]) == 0
    return capsys.readouterr().out


def rl_steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert demo.main(["--quick", "--out", str(out), *SIZES, *FAST]) == 0
    return out


def test_the_demo_trains_evaluates_before_and_after_rl_and_reports(first_run):
    out = first_run
    report = json.loads((out / "report.json").read_text())
    for split, questions in (("held_out", 4), ("training_questions", 3)):
        for name in (split, f"rl_{split}"):
            figures = report[name]
            assert figures["accuracy"]["all"]["questions"] == questions
            assert set(figures["accuracy"]) == TYPES  # an equal share of each type, 3-hop included
            assert 0.0 <= figures["well_formed"] <= 1.0
            assert sum(figures["termination"].values()) == questions
            assert figures["tool_calls_per_trajectory"] >= 0
        # "RL start": the SFT export RL starts from when it is not the final one (Profile.rl_start)
        assert set(report["accuracy"][split]) - {"RL start"} == {"after SFT", "after RL"}
        assert set(report["accuracy"][split]["after RL"]) == TYPES
    assert report["training"]["steps"] == 3 and report["training"]["tokens"] > 0
    assert set(report["seconds"]) - {"eval_start_held_out"} == {
        "world", "data", "tokenizer", "sft", "eval_held_out", "eval_training", "filter", "rl", "eval_rl_held_out",
        "eval_rl_training", "total"}
    # the filter: 2 questions of each type (the quick profile keeps them all); RL: 2 balanced steps
    assert report["filter"]["sampled_by_type"] == report["filter"]["kept_by_type"] == {"direct": 2, "2-hop": 2,
                                                                                       "3-hop": 2}
    rl = report["rl"]
    assert rl["steps"] == 2 and rl["balance_sources"] and len(rl["reward"]["per_step"]) == 2
    assert set(rl["probe"]["per_step"]) == {"0", "1", "2"} and set(rl["probe"]["per_step"]["2"]) == TYPES
    assert rl["probe_seconds"] > 0 and "the probes took" in (first_run / "report.md").read_text()
    assert rl["probe"]["max_response_tokens"] == 768  # the smoke run's probe: its rollouts' budget
    for key in ("response_tokens", "tool_calls"):
        assert rl[key]["first"] >= 0 and rl[key]["last"] >= 0
    # on-policy: weights 1, nothing vetoed (None: no step trained a sequence, e.g. every group all wrong and
    # drop_zero_variance on)
    assert rl["tis_weight_mean"] in (None, pytest.approx(1.0, abs=1e-3)) and rl["veto_fraction"] in (None, 0.0)
    assert 0 < rl["generation_share"] < 1
    text = (out / "report.md").read_text()
    for phrase in ("held-out world (unseen names), after SFT", "held-out, after RL", "well-formed trajectories",
                   "Curriculum filter", "RL: 2 steps", "up to 768 response tokens each", "| 3-hop |"):
        assert phrase in text
    assert (out / "report.html").is_file()
    assert {p.name for p in (out / "plots").iterdir()} == {"sft.png", "rl.png", "rl_behaviour.png", "accuracy.png"}

    checkpoint = out / "sft" / "final"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "tokenizer.json").is_file()
    assert report["checkpoint"] == str(checkpoint) and report["rl_checkpoint"] == str(out / "rl" / "final")
    assert (out / "rl" / "final" / "config.json").is_file()
    tokenizer = Tokenizer.from_dir(checkpoint)
    assert tokenizer.vocab_size == 800


def test_sft_sees_no_3hop_teacher_trajectory_while_rl_and_evaluation_get_3hop_questions(first_run):
    for name in ("train.jsonl", "eval.jsonl"):
        sources = {json.loads(line)["data_source"] for line in (first_run / "data" / name).open()}
        assert sources == {"world-direct", "world-2hop"}
    world = {json.loads(line)["data_source"] for line in (first_run / "world" / "train_sft.jsonl").open()}
    assert "world-3hop" in world  # the world makes them; the data stage leaves them out
    kept = [json.loads(line) for line in (first_run / "filter" / "kept.jsonl").open()]
    assert {q["data_source"] for q in kept} == {"world-direct", "world-2hop", "world-3hop"}
    held = read_trajectories(first_run / "eval-rl" / "held_out" / "trajectories.jsonl")
    assert "world-3hop" in {t.data_source for t in held}


def test_training_and_evaluation_use_the_demo_system_prompt(first_run):
    first = json.loads((first_run / "data" / "train.jsonl").open().readline())
    assert first["messages"][0] == {"role": "system", "content": demo.DEMO_SYSTEM_PROMPT}
    assert sum(m["role"] == "system" for m in first["messages"]) == 1
    tokenizer = Tokenizer.from_dir(first_run / "sft" / "final")
    for evals in ("eval", "eval-rl"):
        for split in ("held_out", "training"):
            trajectories = read_trajectories(first_run / evals / split / "trajectories.jsonl")
            assert all(demo.DEMO_SYSTEM_PROMPT in tokenizer.decode(t.prompt_ids) for t in trajectories)


def test_the_training_sample_comes_from_training_worlds_and_the_held_out_from_the_evaluation_world(first_run):
    for evals in ("eval", "eval-rl"):
        held = read_trajectories(first_run / evals / "held_out" / "trajectories.jsonl")
        seen = read_trajectories(first_run / evals / "training" / "trajectories.jsonl")
        assert all(t.question_id.startswith("eval-") for t in held)
        assert all(t.question_id.startswith("w") for t in seen)
    # the same questions before and after RL
    for split in ("held_out", "training"):
        before = read_trajectories(first_run / "eval" / split / "trajectories.jsonl")
        after = read_trajectories(first_run / "eval-rl" / split / "trajectories.jsonl")
        assert [t.question_id for t in before] == [t.question_id for t in after]


def test_an_evaluation_in_two_processes_or_a_kept_pool_writes_the_trajectories_of_one(first_run, tmp_path):
    held = first_run / "world" / "eval_questions.jsonl"
    questions = demo.sample_questions(held, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reports = [demo.run_eval(f"p{n}", tmp_path, first_run / "sft" / "final", held, questions, True,
                                 context_tokens=1024, processes=n) for n in (1, 2)]
        with WorkerPool(2) as pool:  # the demo's: workers kept from one evaluation to the next
            for name in ("pool-a", "pool-b"):
                demo.run_eval(name, tmp_path, first_run / "sft" / "final", held, questions, True,
                              context_tokens=1024, pool=pool)
    finally:
        torch.set_num_threads(threads)
    one, *others = (read_trajectories(tmp_path / name / "trajectories.jsonl") for name in ("p1", "p2", "pool-a",
                                                                                              "pool-b"))
    for other in others:
        assert [(t.question_id, t.prompt_ids, t.response_ids) for t in other] == \
            [(t.question_id, t.prompt_ids, t.response_ids) for t in one]
    assert len(one) == 4 and reports[1]["avg@k"] == reports[0]["avg@k"]


def test_a_model_without_a_stage_stamp_is_evaluated_and_named_by_its_files(first_run, tmp_path, capsys):
    """An RL checkpoint's hf/ or a model from elsewhere has no demo stamp beside it: the evaluation names it by a
    hash of its files, so it is reused while they are unchanged and redone when they change."""
    model = tmp_path / "elsewhere" / "hf"
    shutil.copytree(first_run / "sft" / "final", model)
    held = first_run / "world" / "eval_questions.jsonl"
    questions = demo.sample_questions(held, 2)

    def evaluate():
        capsys.readouterr()
        demo.run_eval("copy", tmp_path / "evals", model, held, questions, True, context_tokens=1024)
        return capsys.readouterr().out

    assert "reusing" not in evaluate()
    assert "reusing" in evaluate()
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")
    assert "reusing" not in evaluate()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        demo.run_eval("none", tmp_path / "evals", tmp_path / "missing" / "hf", held, questions, True)


def test_the_job_keeps_one_pool_of_workers_for_its_evaluations_and_filter(tmp_path, capsys, monkeypatch):
    """The demo's own wiring with two rollout processes: one pool, its workers started once, serves every
    evaluation and the filter, gives the evaluations of one process and is closed when the job ends."""
    monkeypatch.setitem(demo.PROFILES, "quick", dataclasses.replace(demo.PROFILES["quick"], rollout_processes=2))
    pools, worker_pids = [], []

    class RecordedPool(WorkerPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

        def _start(self):
            super()._start()
            worker_pids.append([worker.pid for worker in self._workers])

    monkeypatch.setattr(demo, "WorkerPool", RecordedPool)
    out = tmp_path / "run"
    log = run_demo(out, capsys, *SIZES, *FAST)
    assert len(pools) == 1 and not pools[0]._workers and not multiprocessing.active_children()
    evaluations = log.count(", 2 processes")
    assert evaluations >= 4 and len(worker_pids) == evaluations + 1  # and the filter
    assert all(pids == worker_pids[0] for pids in worker_pids)

    held = out / "world" / "eval_questions.jsonl"
    questions = demo.sample_questions(held, 4)
    demo.run_eval("one", tmp_path, out / "sft" / "final", held, questions, True, context_tokens=1024)
    one = read_trajectories(tmp_path / "one" / "trajectories.jsonl")
    kept = read_trajectories(out / "eval" / "held_out" / "trajectories.jsonl")
    assert [(t.question_id, t.response_ids) for t in kept] == [(t.question_id, t.response_ids) for t in one]


def test_a_second_run_reuses_every_finished_stage(first_run, capsys):
    model = first_run / "rl" / "final" / "model.safetensors"
    mtime = model.stat().st_mtime_ns
    log = run_demo(first_run, capsys, *SIZES, *FAST)
    for stage in ("world: reusing", "tokenizer: reusing", "SFT: reusing the finished run",
                  "eval (held_out): reusing", "eval (training): reusing", "filter: reusing",
                  "RL: reusing the finished run", "eval after RL (held_out): reusing",
                  "eval after RL (training): reusing"):
        assert stage in log
    assert "step 1/" not in log and model.stat().st_mtime_ns == mtime


def test_an_rl_run_stopped_or_killed_resumes_from_its_checkpoint(first_run, capsys, monkeypatch):
    rl = ["--rl", "max_steps=3"]  # other settings than the finished run's: the RL stage starts again
    log = run_demo(first_run, capsys, *SIZES, *FAST, *rl, "--rl", "stop_after_steps=1")
    assert "filter: reusing" in log and "RL: " in log and "starting it again" in log
    assert "RL: stopped after step 1 of 3" in log and "eval after RL" not in log
    report = json.loads((first_run / "report.json").read_text())
    assert report["rl"]["steps"] == 1 and report["rl_stopped"] and "rl_held_out" not in report

    real_step, calls = loop.RLRun.train_step, []

    def killed(self):
        calls.append(1)
        if len(calls) == 2:  # in step 3, after step 2's checkpoint (the quick profile checkpoints every step)
            raise RuntimeError("simulated kill")
        return real_step(self)

    monkeypatch.setattr(loop.RLRun, "train_step", killed)
    with pytest.raises(RuntimeError, match="simulated kill"):
        demo.main(["--quick", "--out", str(first_run), *SIZES, *FAST, *rl])
    log = capsys.readouterr().out
    assert "at step 1" in log and "step 2/3" in log
    monkeypatch.setattr(loop.RLRun, "train_step", real_step)

    log = run_demo(first_run, capsys, *SIZES, *FAST, *rl)
    assert "starting it again" not in log and "at step 2" in log and "step 3/3" in log
    assert "step 1/3" not in log and "step 2/3" not in log
    assert rl_steps(first_run / "rl") == [0, 1, 2, 3]  # the start probe, then each step once
    report = json.loads((first_run / "report.json").read_text())
    assert report["rl"]["steps"] == 3 and not report["rl_stopped"] and "rl_held_out" in report


def test_skip_rl_stops_after_the_sft_evaluation(first_run, capsys):
    log = run_demo(first_run, capsys, *SIZES, *FAST, "--skip-rl")
    assert "eval (held_out): reusing" in log
    assert "[demo] filter" not in log and "[demo] RL" not in log and "eval after RL" not in log
    report = json.loads((first_run / "report.json").read_text())
    assert report["rl"] is None and "rl_held_out" not in report and set(report["accuracy"]["held_out"]) == {
        "after SFT"}
    assert "held-out world (unseen names), after SFT" in (first_run / "report.md").read_text()


def test_changed_settings_redo_only_the_stages_they_touch(first_run, capsys):
    log = run_demo(first_run, capsys, "--held-out-questions", "2", "--training-questions", "3",
                   *FAST, "max_steps=2")
    assert "world: reusing" in log and "tokenizer: reusing" in log
    assert "trained with other settings or inputs; starting it again" in log
    kept = [d for d in first_run.glob("sft.replaced-*") if (d / "final" / "config.json").is_file()]
    assert kept  # the earlier trained model is set aside, not deleted
    assert "eval (held_out): 2 questions" in log and "eval (training): 3 questions" in log
    assert "filter: " in log and "filter: reusing" not in log  # a new SFT model: the filter and RL run again
    assert "RL: reusing" not in log and "eval after RL (held_out): 2 questions" in log
    report = json.loads((first_run / "report.json").read_text())
    assert report["training"]["steps"] == 2


def test_a_copied_sft_run_adopted_under_new_settings_resumes_from_its_checkpoint(first_run, tmp_path, capsys):
    out = tmp_path / "continued"
    out.mkdir()
    for stage in ("world", "data", "tokenizer"):
        (out / stage).symlink_to(first_run / stage, target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="sft/checkpoints"):
        demo.adopt_sft_run(out, demo.PROFILES["quick"], FAST)
    settings = [*FAST, "max_steps=4", "checkpoint_every=1"]
    earlier = demo.sft_config(out, demo.PROFILES["quick"], [*settings, "stop_after_steps=2"])
    sft.train(earlier)  # another run's directory, stopped after its step-2 checkpoint

    demo.adopt_sft_run(out, demo.PROFILES["quick"], settings)
    log = run_demo(out, capsys, *SIZES, *settings, "--skip-rl")
    assert "starting it again" not in log and not list(out.glob("sft.replaced-*"))
    train_log = (out / "sft" / "train.log").read_text()
    assert "resumed from" in train_log and "at step 2" in train_log
    steps = [json.loads(line)["step"] for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s > 0] == [1, 2, 3, 4]
    assert json.loads((out / "report.json").read_text())["training"]["steps"] == 4


def test_whole_names_is_a_tokenizer_stage_of_its_own(first_run, tmp_path, capsys):
    data = first_run / "data"
    for whole_names in (False, False, True):
        demo.prepare_tokenizer(tmp_path, data, 500, whole_names)
    log = capsys.readouterr().out
    assert log.count("tokens trained") == 2 and log.count("tokenizer: reusing") == 1
    tok = Tokenizer.from_dir(tmp_path / "tokenizer")
    assert tok.encode(" Thupa Bank")[1:] == tok.encode(">Thupa Bank")[1:] == tok.encode('"Thupa Bank')[1:]


def test_a_bad_setting_is_reported_before_any_work(tmp_path, capsys):
    assert demo.main(["--quick", "--out", str(tmp_path / "run"), "lr=oops"]) == 2
    assert "lr = 'oops'" in capsys.readouterr().err
    assert demo.main(["--quick", "--out", str(tmp_path / "run"), "--rl", "clip_low=-1"]) == 2
    assert "clip_low" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_time_budget_replaces_the_step_schedule_and_the_smoke_run_has_no_rewarm(tmp_path):
    full = demo.sft_config(tmp_path, demo.PROFILES["full"], [])
    assert full.max_steps > 0 and full.rewarm_when_held_out_above > 0
    timed = demo.sft_config(tmp_path, demo.PROFILES["full"], demo.budget_overrides(2.5))
    assert (timed.budget_minutes, timed.max_steps, timed.decay_steps, timed.rewarm_when_held_out_above) == (2.5, 0, 0, 0)
    assert demo.sft_config(tmp_path, demo.PROFILES["quick"], []).rewarm_when_held_out_above == 0


def test_a_run_directory_moved_whole_reuses_every_stage(tmp_path, monkeypatch, capsys):
    """The question files the demo and the filter write name their page stores relative to themselves, so the RL
    probe's identity and the kept questions' page stores move with the run directory."""
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run_demo("run", capsys, *SIZES, *FAST)
    kept = (tmp_path / "a" / "run" / "filter" / "kept.jsonl").read_text().splitlines()
    assert kept and all(json.loads(line)["env"].startswith("../world/") for line in kept)
    (tmp_path / "a").rename(tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")
    log = run_demo("run", capsys, *SIZES, *FAST)
    assert "other settings or inputs" not in log
    for stage in ("world", "SFT", "filter", "RL", "eval after RL (held_out)"):
        assert f"{stage}: reusing" in log


@pytest.mark.slow
def test_the_quick_profile_runs_every_stage(tmp_path, capsys):
    """`python -m litere.demo --quick` as a user runs it (the 3.4M model, 200 SFT steps): under 3 minutes on 2
    idle cores."""
    log = run_demo(tmp_path / "run", capsys)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["rl"]["steps"] == 2 and set(report["accuracy"]["held_out"]["after RL"]) == TYPES
    assert "RL: GRPO" in log and (tmp_path / "run" / "report.html").is_file()


def test_the_filter_samples_more_of_a_type_that_kept_too_few(tmp_path, monkeypatch, capsys):
    """A type that kept fewer than min_kept questions is sampled again from questions no earlier round took, until
    it has enough or the rounds run out; the first round is the one-round sample; a run killed in a later round
    rolls out only what it had not finished; a finished one is reused."""
    from litere.rl import curriculum
    from litere.rl.config import FilterConfig

    world = tmp_path / "world"
    world.mkdir()
    rows = [{"id": f"{kind}-{i:03d}", "question": f"q{i}", "answers": ["a"], "data_source": f"world-{kind}"}
            for kind in ("direct", "2hop", "3hop") for i in range(100)]
    (world / "train_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / ".stamp").write_text("the model\n")
    rolled, kill_at = [], [None]

    def roll_out(cfg, env, questions, passes_file, pool):  # every direct question passes, every fifth 2-hop one
        with passes_file.open("a") as out:
            for q in questions:
                if len(rolled) == kill_at[0]:
                    raise RuntimeError("simulated kill")
                rolled.append(q.id)
                correct = 4 if q.data_source == "world-direct" or int(q.id[-3:]) % 5 == 0 else 0
                out.write(json.dumps({"id": q.id, "correct": correct, "samples": 8, "data_source": q.data_source,
                                      "response_tokens_mean": 10.0, "response_tokens_max": 10}) + "\n")

    monkeypatch.setattr(curriculum, "_roll_out", roll_out)
    counts = {"world-direct": 10, "world-2hop": 10}

    def run(name, **more):
        cfg = FilterConfig(model=str(tmp_path / "sft" / "pre_decay"), out_dir=str(tmp_path / name), device="cpu",
                           questions=[str(tmp_path / name / "questions.jsonl")])
        return demo.run_curriculum(cfg, world, counts, **more)

    one = run("one")
    assert one["sampled_by_type"] == {"direct": 10, "2-hop": 10} and one["kept_by_type"]["direct"] == 10
    first = set(rolled)
    rolled.clear()
    summary = run("more", min_kept=4, rounds=5)
    assert set(rolled[:20]) == first and len(rolled) == len(set(rolled))  # no question twice
    taken = demo.load_questions(tmp_path / "more" / "questions.jsonl")
    direct = [q for q in taken if q.data_source == "world-direct"]
    assert len(direct) == 10  # enough after the first round
    two_hop = [int(q.id[-3:]) % 5 == 0 for q in taken if q.data_source == "world-2hop"]  # kept or not, in order
    assert len(two_hop) == summary["sampled_by_type"]["2-hop"] > 10 and len(two_hop) % 10 == 0
    assert sum(two_hop[:-10]) < 4 and (sum(two_hop) >= 4 or len(two_hop) == 50)  # the round that had enough, or the last
    kept = demo.load_questions(tmp_path / "more" / "kept.jsonl")
    assert {q.id for q in kept} == {q.id for q in taken if q.data_source == "world-direct"
                                    or int(q.id[-3:]) % 5 == 0}

    rolled.clear()
    kill_at[0] = 25  # in the second round
    with pytest.raises(RuntimeError, match="simulated kill"):
        run("killed", min_kept=4, rounds=5)
    before, kill_at[0] = list(rolled), None
    rolled.clear()
    resumed = run("killed", min_kept=4, rounds=5)
    assert not set(before) & set(rolled) and resumed == summary
    assert (tmp_path / "killed" / "kept.jsonl").read_text() == (tmp_path / "more" / "kept.jsonl").read_text()
    rolled.clear()
    capsys.readouterr()
    assert run("killed", min_kept=4, rounds=5) == summary and not rolled
    assert "filter: reusing" in capsys.readouterr().out

    rolled.clear()
    few = run("few", min_kept=100, rounds=20)  # more than 2-hop has: the rounds stop when none is left, and say so
    assert few["sampled_by_type"] == {"direct": 100, "2-hop": 100} and len(rolled) == len(set(rolled)) == 200
    assert "sampled every 2-hop training question" in capsys.readouterr().err


@pytest.mark.parametrize("compare, rows", [("precision", ("fp32", "bf16")), ("compile", ("eager", "compiled"))])
def test_the_rl_update_speed_benchmark_times_both_settings_on_a_finished_run(first_run, capsys, compare, rows):
    sys.path.insert(0, str(demo.REPO / "benchmarks"))
    import rl_update_speed

    rl_update_speed.main(["--compare", compare, "--demo", str(first_run), "--model", str(first_run / "sft" / "final"),
                          "--repeats", "2", "--threads", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    dumped = read_records(first_run / "rl" / "rollouts" / "step_1.jsonl.gz")
    assert 0 < result["trajectories"] <= len(dumped)
    assert result["tokens"] > 0 and result["compare"] == compare
    assert [len(result["seconds"][name]) for name in rows] == [2, 2]
    assert result[f"{rows[1]}_vs_{rows[0]}"] > 0


@pytest.mark.parametrize("compare, rows, logged", [
    ("precision", ("fp32", "bf16"), ("precision fp32,", "precision bf16 (autocast),")),
    ("compile", ("eager", "compiled"), ("activation checkpointing off;", "blocks compiled;"))])
def test_the_demo_sft_speed_benchmark_trains_the_demo_data_both_ways(first_run, capsys, tmp_path, compare, rows,
                                                                      logged):
    sys.path.insert(0, str(demo.REPO / "benchmarks"))
    import demo_sft_speed

    demo_sft_speed.main(["--compare", compare, "--demo", str(first_run), "--steps", "12", "--repeats", "1",
                         "--threads", "1"])
    out = capsys.readouterr().out
    assert all(line in out for line in logged)  # each run trained as its row says
    result = json.loads(out.strip().splitlines()[-1])
    assert [len(result["tokens_per_s"][name]) for name in rows] == [1, 1]
    assert min(result["tokens_per_s"][rows[0]] + result["tokens_per_s"][rows[1]]) > 0
    with pytest.raises(SystemExit, match="demo_sft_speed: .*config.toml does not exist"):
        demo_sft_speed.main(["--demo", str(tmp_path)])


def test_the_rl_seeds_table_reads_every_finished_seed_against_rl_start(tmp_path, capsys):
    sys.path.insert(0, str(demo.REPO / "benchmarks"))
    import rl_seeds

    def evaluation(directory, direct, two_hop, well_formed):
        by_source = {"world-direct": {"questions": 4, "avg@k": direct},
                     "world-2hop": {"questions": 4, "avg@k": two_hop},
                     "world-3hop": {"questions": 2, "avg@k": 0.0}}
        report = {"by_data_source": by_source, "avg@k": (direct + two_hop) * 0.4, "questions": 10,
                  "well_formed": well_formed}
        (directory / "held_out").mkdir(parents=True)
        (directory / "held_out" / "report.json").write_text(json.dumps(report))

    def rl_run(directory, rewards, step_s):
        directory.mkdir()
        (directory / "metrics.jsonl").write_text("".join(
            json.dumps({"step": step, "reward_mean": reward, "step_s": step_s}) + "\n"
            for step, reward in enumerate(rewards, 1)))

    evaluation(tmp_path / "eval-pre_decay", 0.25, 0.0, 0.9)
    rl_run(tmp_path / "rl", [0.25, 0.75], 40.0)
    evaluation(tmp_path / "eval-rl", 0.5, 0.25, 0.75)
    rl_run(tmp_path / "rl-seed3", [0.5, 1.0], 60.0)
    evaluation(tmp_path / "eval-rl-seed3", 0.75, 0.5, 0.5)
    rl_run(tmp_path / "rl-seed4", [0.5], 60.0)  # not yet evaluated: no row

    rows = rl_seeds.table(tmp_path)
    out = capsys.readouterr().out
    assert [row["seed"] for row in rows] == [0, 3]
    assert [row["well_formed"] for row in rows] == [0.75, 0.5]
    assert "90.0% of its trajectories well formed" in out
    assert "| 3 | 75.0% | 50.0% | 0.0% | +50.0 / +50.0 | 50.0% | 0.500 → 1.000 | 60.0 |" in out
    with pytest.raises(SystemExit, match="eval-pre_decay/held_out/report.json does not exist"):
        rl_seeds.table(tmp_path / "missing")
