"""The main job end to end on a small world with a few training steps of a smaller model (a smoke test: the
accuracy of so short a run is not checked, the pipeline and its reports are)."""
import json

import pytest

from litere import demo
from litere.agent import read_trajectories
from litere.tokenizer import Tokenizer

FAST = ["max_steps=3", "global_batch=2048", "pack_tokens=2048", "arch.num_hidden_layers=1",
        "arch.hidden_size=64", "arch.intermediate_size=128", "arch.head_dim=16", "threads=1"]


def run_demo(out, capsys, *args) -> str:
    assert demo.main(["--quick", "--out", str(out), *args]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert demo.main(["--quick", "--out", str(out), "--held-out-questions", "4", "--training-questions", "3",
                      *FAST]) == 0
    return out


def test_the_demo_trains_evaluates_and_reports(first_run):
    out = first_run
    report = json.loads((out / "report.json").read_text())
    for split, questions in (("held_out", 4), ("training_questions", 3)):
        figures = report[split]
        assert figures["accuracy"]["all"]["questions"] == questions
        assert set(figures["accuracy"]) <= {"direct", "2-hop", "3-hop", "all"}
        assert 0.0 <= figures["well_formed"] <= 1.0
        assert sum(figures["termination"].values()) == questions
        assert figures["tool_calls_per_trajectory"] >= 0
    assert report["training"]["steps"] == 3 and report["training"]["tokens"] > 0
    assert set(report["seconds"]) == {"world", "data", "tokenizer", "sft", "eval_held_out", "eval_training", "total"}
    text = (out / "report.md").read_text()
    assert "held-out world (unseen names)" in text and "well-formed trajectories" in text

    checkpoint = out / "sft" / "final"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "tokenizer.json").is_file()
    assert report["checkpoint"] == str(checkpoint)
    tokenizer = Tokenizer.from_dir(checkpoint)
    assert tokenizer.vocab_size == 800


def test_training_and_evaluation_use_the_demo_system_prompt(first_run):
    first = json.loads((first_run / "data" / "train.jsonl").open().readline())
    assert first["messages"][0] == {"role": "system", "content": demo.DEMO_SYSTEM_PROMPT}
    assert sum(m["role"] == "system" for m in first["messages"]) == 1
    tokenizer = Tokenizer.from_dir(first_run / "sft" / "final")
    for split in ("held_out", "training"):
        trajectories = read_trajectories(first_run / "eval" / split / "trajectories.jsonl")
        assert all(demo.DEMO_SYSTEM_PROMPT in tokenizer.decode(t.prompt_ids) for t in trajectories)


def test_the_training_sample_comes_from_training_worlds_and_the_held_out_from_the_evaluation_world(first_run):
    held = read_trajectories(first_run / "eval" / "held_out" / "trajectories.jsonl")
    seen = read_trajectories(first_run / "eval" / "training" / "trajectories.jsonl")
    assert all(t.question_id.startswith("eval-") for t in held)
    assert all(t.question_id.startswith("w") for t in seen)


def test_a_second_run_reuses_every_finished_stage(first_run, capsys):
    log = run_demo(first_run, capsys, "--held-out-questions", "4", "--training-questions", "3", *FAST)
    for stage in ("world: reusing", "tokenizer: reusing", "SFT: reusing the finished run",
                  "eval (held_out): reusing", "eval (training): reusing"):
        assert stage in log


def test_changed_settings_redo_only_the_stages_they_touch(first_run, capsys):
    log = run_demo(first_run, capsys, "--held-out-questions", "2", "--training-questions", "3",
                   *FAST, "max_steps=2")
    assert "world: reusing" in log and "tokenizer: reusing" in log
    assert "trained with other settings or inputs; starting it again" in log
    assert "eval (held_out): 2 questions" in log and "eval (training): 3 questions" in log
    report = json.loads((first_run / "report.json").read_text())
    assert report["training"]["steps"] == 2


def test_a_bad_setting_is_reported_before_any_work(tmp_path, capsys):
    assert demo.main(["--quick", "--out", str(tmp_path / "run"), "lr=oops"]) == 2
    assert "lr = 'oops'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
