"""kill -9 in the middle of `rollout.py`, `eval.py` and `train.py --stage filter`, then the same command again: what
was finished and written is not redone, and the output equals an uninterrupted run's (no duplicate, nothing
missing, the same tokens). The killed run is a real process stopped by SIGKILL once its output holds a few lines
(for rollout.py and eval.py an odd number: a question is cut between its samples); a torn last line is added as a
kill in the middle of a write would leave it. The uninterrupted run and the rerun run in this process, after the
killed one (run side by side, the uninterrupted run's hold on the GIL could keep the watcher away until the killed
run had finished)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from litere.evaluation import ResumeError, resume_trajectories
from litere.questions import load_questions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # rollout.py, eval.py and train.py are top-level scripts


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A mini world, a tiny random model with its tokenizer, and 12 questions (six asked twice, new ids)."""
    from model_utils import random_model, small_config

    from litere.bpe import train_tokenizer
    from litere.weights import save_model
    from litere.world import BuildConfig, build, training_texts

    root = tmp_path_factory.mktemp("kill")
    build(BuildConfig(seed=3, worlds=1, trajectories=4, eval_questions=6, workers=1), root / "world", log=None)
    tokenizer = train_tokenizer(training_texts(root / "world"), 400)
    tokenizer.save(root / "model")
    save_model(random_model(small_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=4096)),
               root / "model", tokenizer_dir=root / "model")
    questions = load_questions(root / "world" / "eval_questions.jsonl")
    with (root / "world" / "kill_questions.jsonl").open("w") as f:
        for i in range(12):
            q = questions[i % len(questions)]
            f.write(json.dumps({"id": f"k{i:02d}", "question": q.question, "answers": q.answers,
                                "data_source": q.data_source, "env": q.env}) + "\n")
    return root


def run_and_kill(cmd: list[str], path: Path, ready, log: Path) -> bytes:
    """Runs `cmd` (a fresh Python process), SIGKILLs it as soon as `ready(bytes of path)` and returns those bytes
    (checked: killed by SIGKILL, in the middle).

    The process runs in slices of a millisecond or so: it is stopped (SIGSTOP) while its output is read, so however
    busy the machine, it runs on only while it is watched."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline, seen = time.monotonic() + 300, None
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGSTOP)
        data = path.read_bytes() if path.is_file() else b""
        if ready(data):
            proc.send_signal(signal.SIGKILL)
            seen = data
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    proc.wait()
    assert seen is not None and proc.returncode == -signal.SIGKILL, (
        f"the process ended before it could be killed (rc {proc.returncode}):\n" + log.read_text()[-2000:])
    return seen


def odd_lines_at_least(k: int):
    def ready(data: bytes) -> bool:
        n = data.count(b"\n")
        return n >= k and n % 2 == 1
    return ready


def keyed(records: list[dict]) -> dict:
    return {(r["question_id"], r["sample_index"]): r for r in records}


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def finished_lines(data: bytes, n: int) -> list[bytes]:
    """The complete lines of `data` whose question has all its n samples there."""
    lines = data.split(b"\n")[:-1]
    per_question: dict[str, int] = {}
    for line in lines:
        qid = json.loads(line)["question_id"]
        per_question[qid] = per_question.get(qid, 0) + 1
    return [line for line in lines if per_question[json.loads(line)["question_id"]] == n]


SAME = ("prompt_ids", "response_ids", "response_mask", "rollout_logprobs", "turns", "answer", "termination",
        "sampling", "reward")


def check_same_trajectories(resumed: list[dict], whole: list[dict], n_expected: int):
    keys = [(r["question_id"], r["sample_index"]) for r in resumed]
    assert len(keys) == len(set(keys)) == n_expected  # no duplicate, nothing missing
    assert set(keys) == set(keyed(whole))
    for key, record in keyed(whole).items():
        assert {f: keyed(resumed)[key][f] for f in SAME} == {f: record[f] for f in SAME}, key


# --- rollout.py -----------------------------------------------------------------------------------------------
def rollout_args(files: Path, out: Path) -> list[str]:
    return ["--model", str(files / "model"), "--questions", str(files / "world" / "kill_questions.jsonl"),
            "--n", "2", "--out", str(out), "--max-response-tokens", "40", "--seed", "0", "--device", "cpu",
            "--cache-tokens", "8192", "--temperature", "1.0", "--threads", "1", "--max-num-seqs", "1",
            "--tool-workers", "0"]


def test_rollout_killed_and_rerun_equals_an_uninterrupted_run(files, tmp_path, capsys):
    import rollout

    out = tmp_path / "killed.jsonl"
    before = run_and_kill(["rollout.py", *rollout_args(files, out)], out, odd_lines_at_least(3), tmp_path / "log")
    rollout.main(rollout_args(files, tmp_path / "whole.jsonl"))
    whole = read_lines(tmp_path / "whole.jsonl")
    with out.open("ab") as f:  # as a kill in the middle of a write leaves it
        f.write(json.dumps(whole[0])[:100].encode())
    capsys.readouterr()

    rollout.main(rollout_args(files, out))  # the same command again
    lines_before = before.count(b"\n")
    finished = finished_lines(before, 2)
    assert len(finished) % 2 == 0 and len(finished) < lines_before  # at least one question was cut
    assert f"resuming {out}: {len(finished)} trajectories of {len(finished) // 2} questions already written" in \
        capsys.readouterr().err
    after = out.read_bytes()
    assert set(finished) <= set(after.split(b"\n"))  # kept byte for byte: not redone
    check_same_trajectories(read_lines(out), whole, 24)
    rewritten = after.count(b"\n") - len(finished)
    print(f"rollout.py: killed with {lines_before} lines written (+ a torn one); the rerun wrote {rewritten}; "
          "24 trajectories, 0 duplicates, 0 missing, tokens identical")


def test_resume_refuses_another_runs_file(files, tmp_path):
    from litere.sampler import SamplingParams

    import rollout

    out = tmp_path / "a.jsonl"
    args = rollout_args(files, out)
    args[args.index("--n") + 1] = "1"
    rollout.main(args + ["--limit", "2"])
    questions = load_questions(files / "world" / "kill_questions.jsonl")[:2]
    with pytest.raises(ResumeError, match="a.jsonl:1: question 'k00' sample 0 was sampled with"):
        resume_trajectories(out, questions, 1, SamplingParams(temperature=0.5, seed=0))
    with pytest.raises(SystemExit, match="another run's trajectories"):
        rollout.main(args[:args.index("--seed")] + ["--seed", "1"] + args[args.index("--seed") + 2:])
    rollout.main(args + ["--limit", "3"])  # one more question: the first two are kept
    assert [(r["question_id"]) for r in read_lines(out)] == ["k00", "k01", "k02"]


def test_torn_partial_and_duplicated_records_are_run_again(tmp_path):
    """A last line without its newline is torn even when it parses (the kill fell between the record and its
    newline); a question with a missing or doubled sample is run again; the file keeps only finished questions."""
    from litere.agent import Trajectory
    from litere.questions import Question
    from litere.rl import curriculum

    def line(qid, i):
        return json.dumps(Trajectory(qid, i, "Q?", ["a"], None, [1]).to_dict())

    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([line("q0", 0), line("q1", 0), line("q0", 1), line("q2", 0), line("q2", 0),
                               line("q2", 1), line("x", 0), line("q1", 1)]))  # the last one torn
    questions = [Question(q, "Q?", ["a"]) for q in ("q0", "q1", "q2", "q3")]
    done, todo, foreign = resume_trajectories(path, questions, 2)
    assert [(t.question_id, t.sample_index) for t in done] == [("q0", 0), ("q0", 1)]
    assert [q.id for q in todo] == ["q1", "q2", "q3"] and foreign == 1
    assert path.read_text() == "\n".join([line("x", 0), line("q0", 0), line("q0", 1)]) + "\n"
    assert resume_trajectories(path, questions, 2)[:2] == (done, todo)  # nothing more to drop

    (tmp_path / "passes.rank0.jsonl").write_text('{"id": "a", "correct": 1}\n{"id": "b", "correct": 2}')
    assert list(curriculum.read_passes(tmp_path)) == ["a"]  # "b" will be rolled out again, not lost


# --- eval.py --------------------------------------------------------------------------------------------------
def eval_args(files: Path, out: Path) -> list[str]:
    return ["--model", str(files / "model"), "--questions", str(files / "world" / "kill_questions.jsonl"),
            "--k", "2", "--out", str(out), "--max-response-tokens", "40", "--seed", "0", "--device", "cpu",
            "--cache-tokens", "8192", "--threads", "1", "--max-num-seqs", "1", "--tool-workers", "0"]


def without_timings(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    del report["per_trajectory"]["seconds"]
    for tool in report["tools"].values():
        del tool["latency_s"]
    return report


def test_eval_killed_and_rerun_equals_an_uninterrupted_run(files, tmp_path):
    import eval as eval_script

    out = tmp_path / "killed"
    before = run_and_kill(["eval.py", *eval_args(files, out)], out / "trajectories.jsonl", odd_lines_at_least(3),
                          tmp_path / "log")
    eval_script.main(eval_args(files, tmp_path / "whole"))
    assert not (out / "report.json").exists()
    with (out / "trajectories.jsonl").open("ab") as f:
        f.write(b'{"question_id": "k0')

    eval_script.main(eval_args(files, out))
    whole = read_lines(tmp_path / "whole" / "trajectories.jsonl")
    resumed = read_lines(out / "trajectories.jsonl")
    check_same_trajectories(resumed, whole, 24)
    assert [(r["question_id"], r["sample_index"]) for r in resumed] == \
        [(r["question_id"], r["sample_index"]) for r in whole]  # in question order, as an uninterrupted run
    finished = finished_lines(before, 2)
    assert len(finished) < before.count(b"\n")  # at least one question was cut
    for line in finished:  # not redone: the same record, its time included
        record = json.loads(line)
        assert keyed(resumed)[record["question_id"], record["sample_index"]]["elapsed_s"] == record["elapsed_s"]
    reports = [json.loads((d / "report.json").read_text()) for d in (tmp_path / "whole", out)]
    assert without_timings(reports[0]) == without_timings(reports[1])
    assert not list(out.glob(".*.tmp"))
    lines_before = before.count(b"\n")
    print(f"eval.py: killed with {lines_before} lines written (+ a torn one); 24 trajectories after the rerun, "
          "0 duplicates, 0 missing, report identical but for timings")


def test_eval_refuses_to_resume_a_run_with_other_settings(files, tmp_path):
    import eval as eval_script

    args = eval_args(files, tmp_path / "run") + ["--limit", "1"]
    eval_script.main(args)
    with pytest.raises(SystemExit, match="holds a run with other settings .k differ"):
        eval_script.main([a if a != "2" else "1" for a in args])  # --k 1
    eval_script.main(args + ["--overwrite", "--k", "1"])
    assert json.loads((tmp_path / "run" / "report.json").read_text())["trajectories"] == 1


# --- train.py --stage filter ----------------------------------------------------------------------------------
def test_filter_killed_and_rerun_equals_an_uninterrupted_run(tmp_path):
    """The toy policy rolls out a question in about a millisecond; an LLM judge that takes 40 ms a verdict (the fake
    endpoint of tests/fault_server.py, answering Correct for "yes") paces the run so that the kill lands in it."""
    import train
    from rl_helpers import make_toy
    from fault_server import FaultServer

    from litere.rl import curriculum

    def verdict(request: bytes):
        time.sleep(0.04)
        prompt = json.loads(request)["messages"][0]["content"]
        return ("ok", "Correct" if "Predicted Answer: yes\n" in prompt else "Incorrect")

    judge = FaultServer(pick=verdict)
    try:
        toy = make_toy(tmp_path / "toy", questions=12, sft_steps=40, yes_share=0.5)
        settings = dict(model=str(toy / "sft" / "final"), questions=[str(toy / "questions.jsonl")],
                        system_prompt=str(toy / "system.txt"), samples_per_prompt=4, temperature=1.0, max_turns=2,
                        max_response_tokens=48, max_prompt_tokens=64, cache_tokens=8192, tool_workers=0, seed=0,
                        threads=1, device="cpu", length_buckets=[12, 16, 1000], judge="llm",
                        judge_url=judge.url, judge_model="m", judge_retries=0)
        config = tmp_path / "filter.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))

        def command(out: Path) -> list[str]:
            return ["--stage", "filter", "--config", str(config), f"out_dir={json.dumps(str(out))}"]

        out = tmp_path / "killed"
        before = run_and_kill(["train.py", *command(out)], out / "passes.rank0.jsonl",
                              lambda data: 2 <= data.count(b"\n") < 12, tmp_path / "log")
        assert train.main(command(tmp_path / "whole")) == 0
        with (out / "passes.rank0.jsonl").open("ab") as f:
            f.write(b'{"id": "q1", "correct"')
        assert train.main(command(out)) == 0
    finally:
        judge.close()
    whole, resumed = curriculum.read_passes(tmp_path / "whole"), curriculum.read_passes(out)
    assert resumed == whole and len(whole) == 12 and 0 < sum(p["correct"] for p in whole.values()) < 48
    written = [json.loads(line)["id"] for line in (out / "passes.rank0.jsonl").read_text().splitlines()]
    assert sorted(written) == sorted(whole)  # each question once
    assert (out / "passes.rank0.jsonl").read_bytes().startswith(before)  # finished questions not redone
    for name in ("kept.jsonl", "buckets.json", "summary.json"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text()
    written_before = before.count(b"\n")
    print(f"train.py --stage filter: killed with {written_before} of 12 questions written (+ a torn line); "
          "12 after the rerun, 0 duplicates, 0 missing, kept.jsonl identical")
