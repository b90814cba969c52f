"""Question readers, and end to end: a tiny model, the real sampler and the mini world through rollout.py and
eval.py, plus a policy that memorised one teacher trajectory and replays it through the real tools."""
import json
import sys
from pathlib import Path

import pytest
import torch

from litere.agent import TERMINATIONS, Agent, AgentConfig, read_trajectories
from litere.questions import (Environments, Question, QuestionFileError, load_questions, portable_env,
                              world_env_settings)
from litere.weights import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # rollout.py and eval.py are top-level scripts
sys.path.insert(0, str(ROOT / "tests"))


# --- question files -------------------------------------------------------------------------------------------
def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_questions(tmp_path):
    (tmp_path / "dbs").mkdir()
    path = write_lines(tmp_path / "q.jsonl", [
        {"id": 7, "question": "Who?", "answer": "Bo", "data_source": "s", "mask_url": "w/a", "env": "dbs/w.db"},
        "",
        {"question": "Where?", "answers": ["X", "Y"], "env": "http://h:1"},
    ])
    a, b = load_questions(path)
    assert a == Question("7", "Who?", ["Bo"], "s", "w/a", str(tmp_path / "dbs" / "w.db"))
    assert b == Question("3", "Where?", ["X", "Y"], None, None, "http://h:1")
    assert load_questions(path, limit=1) == [a]


@pytest.mark.parametrize("row,message", [
    ('{"question": "Q"', "q.jsonl:1: not valid JSON"),
    ('["Q"]', "q.jsonl:1: expected a JSON object"),
    ('{"answers": ["a"]}', "q.jsonl:1: missing key 'question'"),
    ('{"question": "Q"}', "q.jsonl:1: missing key 'answers'"),
    ('{"question": "Q", "answers": []}', "q.jsonl:1: key 'answers': answers must be"),
    ('{"question": "Q", "answer": "a", "env": 3}', "q.jsonl:1: key 'env'"),
])
def test_bad_question_lines_are_named(tmp_path, row, message):
    with pytest.raises(QuestionFileError, match=message):
        load_questions(write_lines(tmp_path / "q.jsonl", [row]))


def test_duplicate_ids_and_missing_files(tmp_path):
    with pytest.raises(QuestionFileError, match="'a' appears more than once"):
        load_questions(write_lines(tmp_path / "q.jsonl", [{"id": "a", "question": "Q", "answer": "x"}] * 2))
    with pytest.raises(QuestionFileError, match="no such question file"):
        load_questions(tmp_path / "none.jsonl")


PARQUET_ROWS = [
    {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": " Question: Who founded Ixo?"}],
     "data_source": "webwalker", "reward_model": {"style": "rule", "ground_truth": {"target": ["Bo Lin", "Lin"]}},
     "extra_info": {"index": 12, "question": "Who founded Ixo?", "mask_url": "https://ixo.example/about"}},
    {"prompt": [{"role": "user", "content": " Question: Where is Ixo?"}], "data_source": "frames",
     "reward_model": {"style": "rule", "ground_truth": {"target": ["Devur"]}},
     "extra_info": {"index": 13, "question": None, "mask_url": None}},
]


def test_parquet_questions(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(PARQUET_ROWS), tmp_path / "rl.parquet")
    a, b = load_questions(tmp_path / "rl.parquet")
    assert a == Question("12", "Who founded Ixo?", ["Bo Lin", "Lin"], "webwalker", "https://ixo.example/about")
    assert b == Question("13", "Where is Ixo?", ["Devur"], "frames", None)


def test_parquet_mask_url_falls_back_to_url_and_the_search_tool_arguments(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def row(index, extra=None, tools=None):  # from_pylist takes its columns from the first row: give them all
        return {"prompt": [{"role": "user", "content": f" Question: Q{index}?"}], "data_source": "s",
                "reward_model": {"ground_truth": {"target": ["a"]}}, "extra_info": {"index": index, **(extra or {})},
                "tools_kwargs": tools}

    search = {"search": {"create_kwargs": {"url": "https://src.example/top"}}}
    rows = [row(0, {"mask_url": "https://m.example", "url": "https://u.example"}),
            row(1, {"mask_url": "", "url": "https://u.example"}),
            row(2, {"tools_kwargs": {"search": {"create_kwargs": {"url": "https://src.example/extra"}}}},
                tools=search),
            row(3, tools=search),
            row(4, tools={"visit": {"create_kwargs": {"url": "https://ignored.example"}}})]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rl.parquet")
    assert [q.mask_url for q in load_questions(tmp_path / "rl.parquet")] == [
        "https://m.example", "https://u.example", "https://src.example/extra", "https://src.example/top", None]


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "rl.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(QuestionFileError, match="needs pyarrow; install it with `pip install pyarrow`"):
        load_questions(tmp_path / "rl.parquet")


# --- the mini world, a tiny model and the real sampler --------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from litere.world import BuildConfig, build

    out = tmp_path_factory.mktemp("world")
    build(BuildConfig(seed=3, worlds=1, trajectories=4, eval_questions=6, workers=1), out, log=None)
    return out


@pytest.fixture(scope="module")
def tokenizer(world, tmp_path_factory):
    from litere.bpe import train_tokenizer
    from litere.world import training_texts

    return train_tokenizer(training_texts(world), 400)


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    from model_utils import random_model, small_config

    from litere.weights import save_model

    out = tmp_path_factory.mktemp("model")
    tokenizer.save(out)
    config = small_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=4096)
    save_model(random_model(config), out, tokenizer_dir=out)
    return out


def test_the_policy_sampler_stops_on_im_end_and_endoftext(model_dir):
    import argparse

    from litere.cli import add_agent_arguments, add_model_arguments, load_policy

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    add_agent_arguments(parser, mode="eval", temperature=0.6, top_p=0.95, top_k=20, presence_penalty=1.1,
                        max_turns=100, max_response_tokens=None)
    _, tokenizer, sampler = load_policy(parser.parse_args(["--model", str(model_dir), "--device", "cpu",
                                                           "--cache-tokens", "256"]))
    assert list(sampler.stop_token_ids) == [tokenizer.im_end_id, tokenizer.endoftext_id]


def test_world_questions_carry_their_environment(world):
    questions = load_questions(world / "eval_questions.jsonl")
    assert questions[0].env == str(world / "eval.db")
    assert world_env_settings(world / "eval_questions.jsonl")["results_per_query"] == 3
    envs = Environments()
    env = envs(questions[0])
    assert envs(questions[1]) is env and env.search("Vivu").startswith("A Google search for 'Vivu' found")
    with pytest.raises(ValueError, match="names no env and no default"):
        envs(Question("x", "Q?", ["a"]))


def test_a_written_question_file_names_its_page_store_relative_to_itself_so_a_moved_tree_still_finds_it(tmp_path):
    store = tmp_path / "run" / "world" / "pages.db"
    out = tmp_path / "run" / "filter" / "kept.jsonl"
    assert portable_env(str(store), out) == "../world/pages.db"
    assert portable_env("http://host:8000", out) == "http://host:8000" and portable_env(None, out) is None
    assert portable_env("/pages.db", out) == "/pages.db"  # nothing shared below the root: kept absolute
    assert portable_env("pages.db", out) == "pages.db"
    out.parent.mkdir(parents=True)
    write_lines(out, [{"id": "a", "question": "Q", "answer": "x", "env": portable_env(str(store), out)}])
    assert load_questions(out)[0].env == str(store.resolve())
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    assert load_questions(moved / "filter" / "kept.jsonl")[0].env == str((moved / "world" / "pages.db").resolve())


def check_record(t, tokenizer, max_response):
    assert t.termination in TERMINATIONS and t.num_turns >= 1
    assert len(t.response_ids) == len(t.response_mask) == len(t.rollout_logprobs) <= max_response
    assert all((m == 1) == (lp < 0) for m, lp in zip(t.response_mask, t.rollout_logprobs))
    assert tokenizer.decode(t.prompt_ids).endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert t.reward in (0.0, 1.0) and t.judge["method"] in ("exact_match", "no_answer")


def test_rollout_cli_writes_records_and_eval_rescores_them(world, tokenizer, model_dir, tmp_path, capsys):
    import eval as eval_script
    import rollout

    out = tmp_path / "roll.jsonl"
    rollout.main(["--model", str(model_dir), "--questions", str(world / "eval_questions.jsonl"), "--limit", "3",
                  "--n", "2", "--out", str(out), "--max-response-tokens", "40", "--seed", "0", "--device", "cpu",
                  "--cache-tokens", "8192", "--temperature", "1.0"])
    trajectories = read_trajectories(out)
    assert sorted((t.question_id, t.sample_index) for t in trajectories) == [  # written as they finish
        (f"eval-q000{i}", s) for i in range(3) for s in range(2)]
    for t in trajectories:
        check_record(t, tokenizer, 40)
    assert "6/6 trajectories" in capsys.readouterr().err

    run_dir = tmp_path / "rescored"
    eval_script.main(["--trajectories", str(out), "--questions", str(world / "eval_questions.jsonl"),
                      "--out", str(run_dir)])
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["questions"], report["trajectories"], report["k"]) == (3, 6, 2)
    assert sum(report["termination"].values()) == 6
    assert "| **all** | 3 |" in (run_dir / "report.md").read_text()
    assert len(read_trajectories(run_dir / "trajectories.jsonl")) == 6


def test_rollout_cli_with_the_compiled_decode_step_writes_the_same_trajectories(world, model_dir, tmp_path,
                                                                                monkeypatch):
    import rollout
    from litere.sampler.decode_graph import CompiledDecode

    compiled_steps = []
    original = CompiledDecode.__call__
    monkeypatch.setattr(CompiledDecode, "__call__", lambda self, *a: compiled_steps.append(1) or original(self, *a))

    def run(*extra):
        out = tmp_path / f"roll{len(extra)}.jsonl"
        rollout.main(["--model", str(model_dir), "--questions", str(world / "eval_questions.jsonl"), "--limit", "2",
                      "--n", "2", "--out", str(out), "--max-response-tokens", "40", "--seed", "3", "--device", "cpu",
                      "--cache-tokens", "8192", "--temperature", "1.0", *extra])
        return {(t.question_id, t.sample_index): (t.response_ids, t.rollout_logprobs) for t in read_trajectories(out)}

    eager = run()
    assert not compiled_steps
    compiled = run("--compile", "default")
    assert len(compiled_steps) > 20
    assert eager.keys() == compiled.keys() and len(eager) == 4
    for key, (ids, logprobs) in eager.items():
        assert compiled[key][0] == ids
        assert max(abs(a - b) for a, b in zip(compiled[key][1], logprobs)) < 1e-4


def test_eval_cli_in_two_processes_writes_the_trajectories_of_one(world, model_dir, tmp_path):
    import eval as eval_script

    def run(processes: int) -> list:
        run_dir = tmp_path / f"p{processes}"
        eval_script.main(["--model", str(model_dir), "--questions", str(world / "eval_questions.jsonl"), "--limit", "3",
                          "--k", "2", "--out", str(run_dir), "--max-context", "400", "--device", "cpu", "--seed", "5",
                          "--cache-tokens", "8192", "--threads", "1", "--processes", str(processes)])
        return [(t.question_id, t.sample_index, t.response_ids, t.rollout_logprobs)
                for t in read_trajectories(run_dir / "trajectories.jsonl")]

    one = run(1)
    assert len(one) == 6 and run(2) == one


def test_a_bad_model_directory_fails_before_rollout_workers_start(world, tmp_path):
    import eval as eval_script

    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        eval_script.main(["--model", str(tmp_path / "missing"), "--questions", str(world / "eval_questions.jsonl"),
                          "--k", "1", "--out", str(tmp_path / "run"), "--processes", "2"])


def test_eval_cli_reaches_the_context_limit_with_the_real_sampler(world, tokenizer, model_dir, tmp_path):
    import eval as eval_script

    (tmp_path / "system.txt").write_text("Answer with the tools.")
    question = load_questions(world / "eval_questions.jsonl")[0].question
    prompt = len(tokenizer.prompt_ids(question, system="Answer with the tools."))
    run_dir = tmp_path / "run"
    eval_script.main(["--model", str(model_dir), "--questions", str(world / "eval_questions.jsonl"), "--limit", "1",
                      "--k", "2", "--out", str(run_dir), "--max-context", str(prompt + 300), "--final-answer-tokens",
                      "12", "--device", "cpu", "--cache-tokens", "8192", "--seed", "1",
                      "--system-prompt", str(tmp_path / "system.txt")])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["trajectories"] == 2 and report["run"]["sampling"]["top_k"] == 20
    for t in read_trajectories(run_dir / "trajectories.jsonl"):
        check_record(t, tokenizer, 300)
        if t.termination == "context_limit":  # the usual fate of a random model: cut, reminded, cut again
            assert t.turns[-2]["role"] == "user" and len(t.prompt_ids) + len(t.response_ids) <= prompt + 300


def test_memorised_teacher_replays_through_the_real_tools(world, tokenizer):
    """A model trained to recite one teacher trajectory, decoded greedily by the real sampler against the real
    environment, must reproduce it token for token: same ids, same loss mask, logprobs of the trainer."""
    from model_utils import random_model, small_config

    from litere.env import open_env
    from litere.reward import ExactMatchJudge, score_trajectories
    from litere.sampler import Sampler, SamplingParams

    system = "Answer with the tools."
    row = json.loads((world / "eval_sft.jsonl").read_text().splitlines()[0])
    messages = [{"role": "system", "content": system}] + row["messages"][1:]
    ids, mask = tokenizer.encode_conversation(messages)
    torch.manual_seed(0)
    model = random_model(small_config(vocab_size=tokenizer.vocab_size), seed=1).train()
    x, y = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
    supervised = torch.tensor(mask[1:], dtype=torch.bool)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        hidden = model(x, torch.arange(len(x)))[supervised]
        loss = -model.token_logprobs(hidden, y[supervised]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            with torch.no_grad():
                if bool((model.logits(hidden).argmax(-1) == y[supervised]).all()) and loss.item() < 0.05:
                    break
    model.eval()

    question = next(q for q in load_questions(world / "eval_questions.jsonl") if q.id == row["id"])
    sampler = Sampler(model, max_cache_tokens=4096, stop_token_ids=(tokenizer.im_end_id,))
    agent = Agent(sampler, tokenizer, open_env(question.env), SamplingParams(temperature=0.0),
                  AgentConfig(system_prompt=system, max_response_tokens=2048))
    (t,) = agent.run([question])
    score_trajectories([t], ExactMatchJudge())
    assert (t.termination, t.answer, t.reward) == ("answer", row["answers"][0], 1.0)
    assert [c.name for c in t.tool_calls] == ["search", "visit"] and all(c.success for c in t.tool_calls)
    n = len(t.prompt_ids) + len(t.response_ids)
    assert t.prompt_ids + t.response_ids == ids[:n] and tokenizer.decode(ids[n:]) == "\n"
    assert [0] * len(t.prompt_ids) + t.response_mask == mask[:n]
    with torch.no_grad():
        full = torch.tensor(t.prompt_ids + t.response_ids)
        trainer = model.token_logprobs(model(full[:-1], torch.arange(n - 1)), full[1:])[len(t.prompt_ids) - 1:]
    sampled = torch.tensor(t.response_mask, dtype=torch.bool)
    torch.testing.assert_close(torch.tensor(t.rollout_logprobs)[sampled], trainer[sampled], atol=1e-4, rtol=1e-4)
