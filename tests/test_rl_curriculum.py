"""The difficulty curriculum (`train.py --stage filter`): pass counts written as questions finish, a killed run
resumed without redoing finished questions, the kept subset and the stage-2 buckets."""
import json
import os

import pytest
import torch

from litere import run_config
from litere.agent import WorkerPool
from litere.questions import load_questions
from litere.rl import curriculum
from litere.rl.config import FilterConfig
from rl_helpers import make_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_toy(tmp_path_factory.mktemp("toy"), questions=8, sft_steps=40, yes_share=0.5)
    torch.set_num_threads(threads)


def filter_config(toy, out, **extra) -> FilterConfig:
    settings = dict(model=str(toy / "sft" / "final"), questions=[str(toy / "questions.jsonl")], out_dir=str(out),
                    system_prompt=str(toy / "system.txt"), samples_per_prompt=4, temperature=1.0, max_turns=2,
                    max_response_tokens=48, max_prompt_tokens=64, cache_tokens=8192, tool_workers=0, seed=0,
                    length_buckets=[12, 16, 1000])
    settings.update(extra)
    return run_config.load(FilterConfig, None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])


def test_filter_keeps_questions_with_some_but_not_all_correct(toy, tmp_path):
    out = curriculum.run_filter(filter_config(toy, tmp_path))
    passes = curriculum.read_passes(out)
    assert set(passes) == {f"q{i}" for i in range(8)}
    assert all(p["samples"] == 4 and 0 <= p["correct"] <= 4 for p in passes.values())
    kept = load_questions(out / "kept.jsonl")
    assert [q.id for q in kept] == [f"q{i}" for i in range(8) if 1 <= passes[f"q{i}"]["correct"] <= 3]
    assert kept and kept[0].env == str(toy / "pages.db")
    assert json.loads((out / "kept.jsonl").read_text().splitlines()[0])["env"] == os.path.relpath(toy / "pages.db", out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == len(kept) and sum(summary["correct_histogram"].values()) == 8
    buckets = json.loads((out / "buckets.json").read_text())
    assert sum(buckets["toy"].values()) == len(kept) and set(buckets["toy"]) <= {"<12", "<16", "<1000", ">=1000"}


def test_a_killed_filter_resumes_without_redoing_finished_questions(toy, tmp_path, monkeypatch):
    whole = curriculum.read_passes(curriculum.run_filter(filter_config(toy, tmp_path / "whole")))
    out = tmp_path / "killed"
    out.mkdir()
    lines = (tmp_path / "whole" / "passes.rank0.jsonl").read_text().splitlines()
    # killed after three questions, in the middle of writing the fourth line
    (out / "passes.rank0.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    rolled_out = []
    real_run = curriculum.Agent.run
    monkeypatch.setattr(curriculum.Agent, "run", lambda self, qs, **kw: rolled_out.extend(q.id for q in qs)
                        or real_run(self, qs, **kw))
    resumed = curriculum.read_passes(curriculum.run_filter(filter_config(toy, out)))
    done_before = {json.loads(line)["id"] for line in lines[:3]}
    assert sorted(rolled_out) == sorted(set(whole) - done_before)
    assert resumed == whole
    written = [json.loads(line)["id"] for line in (out / "passes.rank0.jsonl").read_text().splitlines()]
    assert sorted(written) == sorted(whole)  # every question once, the torn line gone


def test_resuming_with_other_settings_is_refused(toy, tmp_path):
    curriculum.run_filter(filter_config(toy, tmp_path))
    with pytest.raises(run_config.RunConfigError, match="temperature differ"):
        curriculum.run_filter(filter_config(toy, tmp_path, temperature=0.5))


def test_rollout_processes_give_the_pass_counts_of_one_process(toy, tmp_path):
    one = curriculum.read_passes(curriculum.run_filter(filter_config(toy, tmp_path / "one")))
    two = curriculum.read_passes(curriculum.run_filter(filter_config(toy, tmp_path / "two", rollout_processes=2,
                                                                     threads=1)))
    assert two == one
    assert (tmp_path / "two" / "kept.jsonl").read_text() == (tmp_path / "one" / "kept.jsonl").read_text()


def test_a_kept_pool_gives_the_pass_counts_of_one_process_and_must_match_the_settings(toy, tmp_path):
    one = curriculum.read_passes(curriculum.run_filter(filter_config(toy, tmp_path / "one")))
    two = filter_config(toy, tmp_path / "two", rollout_processes=2, threads=1)
    with WorkerPool(2) as pool:
        with pytest.raises(ValueError, match=r"a pool of 2 workers x 1 threads for rollout_processes=3"):
            curriculum.run_filter(filter_config(toy, tmp_path / "three", rollout_processes=3, threads=1), pool)
        assert curriculum.read_passes(curriculum.run_filter(two, pool)) == one


def test_rollout_processes_must_be_positive(toy, tmp_path):
    with pytest.raises(run_config.RunConfigError, match="rollout_processes=0 must be positive"):
        filter_config(toy, tmp_path, rollout_processes=0)


def test_trajectories_in_flight_are_bounded_and_the_bound_changes_no_pass_count(toy, tmp_path):
    from litere.rl.rollouts import agent_config

    assert agent_config(filter_config(toy, tmp_path, max_num_seqs=48)).max_concurrent == 48
    assert agent_config(filter_config(toy, tmp_path, max_in_flight=4)).max_concurrent == 4
    whole = curriculum.read_passes(curriculum.run_filter(filter_config(toy, tmp_path / "all")))
    one_by_one = curriculum.read_passes(curriculum.run_filter(filter_config(toy, tmp_path / "four",
                                                                            max_in_flight=4)))
    assert one_by_one == whole
