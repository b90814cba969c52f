"""Bad rows in every file a user hands the trainer — question files (JSON lines, parquet), SFT files (messages JSON
lines, sharegpt JSON arrays), run configs (TOML files, key=value overrides) and trajectory files — give one error of
the reader's own type that names the file, the line (or parquet row) and the field; never a traceback from deep
inside, never a silently wrong value. Seeded generators put one or a few bad rows among good ones: a mutation of
one field of a good row (wrong type, empty, NaN, an unpaired surrogate, out of range) or a broken line (cut JSON,
bytes that are not UTF-8, nesting too deep, not an object)."""
import dataclasses
import json
import math
import random
import typing

import pytest

from litere import run_config
from litere.agent.trajectory import Trajectory, ToolCallRecord, TrajectoryFileError, read_trajectories
from litere.questions import Question, QuestionFileError, load_questions
from litere.rl.config import RLConfig
from litere.train.sft import SFTConfig
from litere.train.sft_data import DataError, load_sft_dataset
from sft_helpers import conversation, make_tokenizer

CASES = 300  # per file kind
MISSING = object()  # a mutation that removes the field
SURROGATE = "\ud800"  # json.dumps writes it as the escape "\ud800", which json.loads accepts

# Lines that are not a record at all: (bytes, what the error says).
BROKEN_LINES = [
    (b'{"question": "Q", "answers": ["a"]', "not valid JSON"),
    (b'{"question": "Q", "answers": ["a"]}}', "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"question": "caf\xe9"}', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b"{'single': 'quotes'}", "not valid JSON"),
    (b"\x00\x01\x02", "not valid JSON"),
]


def check_error(excinfo_value, path, where: str, field: str | None, cause: str | None = None):
    message = str(excinfo_value)
    assert message.startswith(str(path)), message
    assert where in message, (where, message)
    if field is not None:
        assert field in message, (field, message)
    if cause is not None:
        assert cause in message, (cause, message)
    assert "Traceback" not in message


def lines_with(good_rows: list[bytes], bad: list[tuple[int, bytes]]) -> tuple[bytes, list[int]]:
    """The file's bytes: good rows with the bad ones inserted at their positions; the (1-based) bad line numbers."""
    rows = list(good_rows)
    for position, row in sorted(bad):
        rows.insert(position, row)
    bad_rows = {row for _, row in bad}
    return b"".join(r + b"\n" for r in rows), [i + 1 for i, r in enumerate(rows) if r in bad_rows]


def dumps(row) -> bytes:
    return json.dumps(row, ensure_ascii=True).encode()


# --- question files ------------------------------------------------------------------------------------------------
def good_question(i: int) -> dict:
    return {"id": f"q{i}", "question": f"Who founded company {i}?", "answers": [f"Founder {i}", "F"],
            "data_source": "toy", "mask_url": f"https://example.com/{i}"}


BAD_QUESTION_FIELDS = {
    "question": [MISSING, None, 3, [], {}, "", "   ", SURROGATE + "x", True],
    "answers": [[], {}, None, True, math.inf, [""], [None], [[]], [True], [math.nan], "", ["a", SURROGATE], ["  "]],
    "id": [True, 1.5, [], {}, "", SURROGATE],
    "data_source": [3, [], {}, True, SURROGATE],
    "mask_url": [3, [], {"u": 1}, False],
    "env": [3, "", [], {}, "a\u0000b"],
}


def mutated_question(rng: random.Random, i: int) -> tuple[bytes, str]:
    row = good_question(i)
    field = rng.choice(sorted(BAD_QUESTION_FIELDS))
    value = rng.choice(BAD_QUESTION_FIELDS[field])
    if field == "answers" and rng.random() < 0.5:  # the singular spelling
        del row["answers"]
        field = "answer"
    if value is MISSING:
        row.pop(field, None)
    else:
        row[field] = value
    return dumps(row), field


def test_question_files_name_the_line_and_field(tmp_path):
    rng = random.Random(0)
    tried = 0
    for case in range(CASES):
        good = [dumps(good_question(i)) for i in range(rng.randint(0, 6))]
        if rng.random() < 0.2:
            row, cause = rng.choice(BROKEN_LINES)
            field = None
        else:
            row, field = mutated_question(rng, 100 + case)
            cause = None
        content, bad_lines = lines_with(good, [(rng.randint(0, len(good)), row)])
        path = tmp_path / f"q{case}.jsonl"
        path.write_bytes(content)
        with pytest.raises(QuestionFileError) as e:
            load_questions(path)
        check_error(e.value, path, f"{path}:{bad_lines[0]}: ", field and f"'{field}'", cause)
        tried += 1
    assert tried == CASES


def test_question_values_are_kept_exactly_or_refused(tmp_path):
    """Rows a reader accepts keep their values: ids of ints become their digits, answers of numbers their text;
    a byte-order mark and blank lines are not rows; a repeated id names both lines."""
    path = tmp_path / "q.jsonl"
    rows = [{"id": 7, "question": "Q7", "answer": 1990}, {"question": "Q", "answers": ["a", 2.5], "extra": [1]}]
    path.write_bytes(b"\xef\xbb\xbf" + dumps(rows[0]) + b"\n\n" + dumps(rows[1]) + b"\n")
    assert load_questions(path) == [Question("7", "Q7", ["1990"]), Question("3", "Q", ["a", "2.5"])]
    path.write_bytes(dumps(rows[0]) + b"\n" + dumps({**rows[1], "id": "7"}) + b"\n")
    with pytest.raises(QuestionFileError, match=r"q.jsonl:2: key 'id': question id '7' appears more than once "
                                                r"\(first at .*q.jsonl:1\)"):
        load_questions(path)


def good_parquet_row(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f" Question: Q{i}?"}], "data_source": "s",
            "reward_model": {"style": "rule", "ground_truth": {"target": [f"A{i}"]}},
            "extra_info": {"index": i, "question": f"Q{i}?", "mask_url": f"https://m.example/{i}"}}


def mutated_parquet_row(rng: random.Random, i: int) -> tuple[dict, str]:
    row = good_parquet_row(i)
    kind = rng.randrange(9)
    if kind == 0:
        row["reward_model"] = rng.choice([None, {"style": "rule"}, {"ground_truth": None}])
        return row, "reward_model.ground_truth.target"
    if kind == 1:
        row["reward_model"]["ground_truth"]["target"] = rng.choice([[], [""], ["  "]])
        return row, "reward_model.ground_truth.target"
    if kind == 2:
        row["reward_model"] = rng.choice(["rule", 3])
        return row, "reward_model"
    if kind == 3:
        row["extra_info"] = rng.choice(["info", 3, ["x"]])
        return row, "extra_info"
    if kind == 4:
        row["extra_info"]["question"] = None
        row["prompt"] = rng.choice([None, [], [{"role": "system", "content": "s"}], [{"role": "user", "content": 3}],
                                    [{"role": "user", "content": " Question:  "}]])
        return row, "prompt"
    if kind == 5:
        row["extra_info"]["question"] = rng.choice([3, ["q"], True])
        return row, "extra_info.question"
    if kind == 6:
        row["extra_info"]["index"] = rng.choice([["1"], {"a": 1}, "", 1.5])
        return row, "id"
    if kind == 7:
        row["data_source"] = rng.choice([3, ["s"], True])
        return row, "data_source"
    row["extra_info"]["mask_url"] = rng.choice([3, ["u"], True])
    return row, "extra_info.mask_url"


def test_parquet_questions_name_the_row_and_field(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = random.Random(1)
    for case in range(CASES // 2):
        path = tmp_path / f"q{case}.parquet"
        rows = [good_parquet_row(i) for i in range(rng.randint(0, 4))]
        bad, field = mutated_parquet_row(rng, 100 + case)
        position = rng.randint(0, len(rows))
        rows.insert(position, bad)
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            table, position = pa.Table.from_pylist([bad]), 0  # columns of one type: the bad row alone
        pq.write_table(table, path)
        with pytest.raises(QuestionFileError) as e:
            load_questions(path)
        check_error(e.value, path, f"{path}: row {position}: ", field)
    # files that are not parquet at all, or cut short
    pq.write_table(pa.Table.from_pylist([good_parquet_row(0)]), tmp_path / "whole.parquet")
    whole = (tmp_path / "whole.parquet").read_bytes()
    for case in range(CASES // 2):
        path = tmp_path / f"cut{case}.parquet"
        path.write_bytes(whole[:rng.randrange(len(whole))] if case % 2 else rng.randbytes(rng.randint(0, 300)))
        with pytest.raises(QuestionFileError) as e:
            load_questions(path)
        check_error(e.value, path, f"{path}: ", None, "not a readable parquet file")


# --- SFT files -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(2)
    return make_tokenizer(tmp_path_factory.mktemp("tok"), [conversation(rng, i) for i in range(20)])


def good_messages(rng: random.Random, i: int) -> dict:
    return {"messages": conversation(rng, i)}


def to_sharegpt(record: dict) -> dict:
    names = {"user": "human", "assistant": "gpt", "tool": "observation"}
    messages = record["messages"]
    return {"system": messages[0]["content"],
            "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages[1:]]}


def mutated_messages(rng: random.Random, i: int) -> tuple[dict, str]:
    record = good_messages(rng, i)
    messages = record["messages"]
    k = rng.randrange(len(messages))
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice([{"msgs": messages}, {"messages": None}, {"messages": []}, {"messages": "hi"},
                           {"messages": {"role": "user"}}]), "messages"
    if kind == 1:
        messages[k] = rng.choice([3, "text", [], None])
        return record, f"message {k}"
    if kind == 2:
        messages[k]["role"] = rng.choice(["bot", 3, [], None, {"r": 1}, ""])
        return record, "role"
    if kind == 3:
        messages[k]["content"] = rng.choice([None, 3, [], {"text": "x"}, True])
        return record, "content"
    if kind == 4:
        messages[k]["content"] += SURROGATE
        return record, f"message {k}"
    if kind == 5:
        del messages[k]["content"]
        return record, "content"
    last = len(messages) - 1
    messages[last]["content"] = "It was Bo.\n</think>\n\n<answer>Bo</answer>"
    return record, f"message {last} (assistant)"


def mutated_sharegpt(rng: random.Random, i: int) -> tuple[dict, str]:
    record = to_sharegpt(good_messages(rng, i))
    turns = record["conversations"]
    k = rng.randrange(len(turns))
    kind = rng.randrange(6)
    if kind == 0:
        record["conversations"] = rng.choice([None, [], "hi", {"from": "human"}])
        return record, "conversations"
    if kind == 1:
        turns[k] = rng.choice([3, "text", [], None])
        return record, f"conversation turn {k}"
    if kind == 2:
        turns[k]["from"] = rng.choice(["robot", 3, [], {"a": 1}, None])
        return record, f"conversation turn {k}"
    if kind == 3:
        turns[k]["value"] = rng.choice([None, 3, ["x"], {"v": 1}])
        return record, f"conversation turn {k}"
    if kind == 4:
        turns[k]["value"] = SURROGATE + turns[k]["value"]
        return record, f"conversation turn {k}"
    record["system"] = rng.choice([3, ["s"], {"s": 1}, True, 0, [], SURROGATE])
    return record, "'system'"


def test_sft_json_lines_name_the_line_and_field_or_count_skipped_rows(tmp_path, tok):
    rng = random.Random(3)
    for case in range(CASES):
        good = [dumps(good_messages(rng, i)) for i in range(rng.randint(1, 5))]
        bad = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.2:
                row, cause = rng.choice(BROKEN_LINES)
                field = None
            else:
                record, field = mutated_messages(rng, case) if rng.random() < 0.6 else mutated_sharegpt(rng, case)
                row, cause = dumps(record), None
            bad.append((rng.randint(0, len(good)), row, field, cause))
        content, bad_lines = lines_with(good, [(p, row) for p, row, _, _ in bad])
        path = tmp_path / f"s{case}.jsonl"
        path.write_bytes(content)
        with pytest.raises(DataError) as e:
            load_sft_dataset([path], tok, cutoff_len=4096)
        first_row = content.split(b"\n")[bad_lines[0] - 1]  # the first bad line in the file is the one reported
        field, cause = next((f, c) for _, row, f, c in bad if row == first_row)
        check_error(e.value, path, f"{path}:{bad_lines[0]}: ", field, cause)
        logged = []
        dataset, stats = load_sft_dataset([path], tok, cutoff_len=4096, bad_lines="skip", log=logged.append)
        assert (stats.bad, stats.kept, len(dataset), stats.records) == (len(bad), len(good), len(good),
                                                                        len(good) + len(bad)), case
        assert [s.rsplit(":", 1)[1] for s in dataset.sources] == [
            str(n) for n in range(1, len(good) + len(bad) + 1) if n not in bad_lines]
        assert [m.split(": ")[0] for m in stats.bad_examples] == [f"{path}:{n}" for n in bad_lines]
        assert len(logged) == len(bad) and f"{len(bad)} bad records skipped" in stats.summary()


def test_sft_json_arrays_name_the_line_and_field(tmp_path, tok):
    rng = random.Random(4)
    for case in range(CASES):
        records = [to_sharegpt(good_messages(rng, i)) for i in range(rng.randint(1, 4))]
        position = rng.randint(0, len(records))
        broken = rng.random() < 0.25
        if broken:  # the array itself is broken: no closing bracket, text after it, a cut element
            field = None
            kind = rng.randrange(3)
        else:
            bad, field = mutated_sharegpt(rng, case) if rng.random() < 0.6 else mutated_messages(rng, case)
            records.insert(position, bad)
        elements = [json.dumps(r, indent=1, ensure_ascii=True) for r in records]
        text = "[\n" + ",\n".join(elements) + "\n]\n"
        if broken:
            if kind == 0:
                text, cause = text.rstrip()[:-1], "not closed"
            elif kind == 1:
                text, cause = text + '{"more": 1}\n', "after the end"
            else:
                cut = text.index(elements[min(position, len(elements) - 1)]) + 5
                text, cause = text[:cut] + "\n]\n", "not valid JSON"
        else:
            cause = None
        path = tmp_path / f"s{case}.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError) as e:
            load_sft_dataset([path], tok, cutoff_len=4096)
        if broken:
            check_error(e.value, path, f"{path}:", None, cause)
        else:  # the line where the bad element starts
            line = 1 + text[:text.index(elements[position])].count("\n")
            check_error(e.value, path, f"{path}:{line}: ", field)
            _, stats = load_sft_dataset([path], tok, cutoff_len=4096, bad_lines="skip", log=lambda m: None)
            assert (stats.bad, stats.kept) == (1, len(records) - 1)


# --- run configs ---------------------------------------------------------------------------------------------------
WRONG_TYPE = {  # TOML literals of another type than the annotation
    int: ['"abc"', "1.5", "true", "[1]", "{a = 1}"],
    float: ['"abc"', "true", "[0.1]", "nan", "inf", "-inf", "{a = 1}"],
    str: ["3", "true", "[1]", "{a = 1}", "1.5"],
    bool: ["1", '"yes"', "[]", "0.0"],
    list: ["3", "[1, 2]", "{a = 1}", "true"],
    dict: ["3", '"x"', "[1]", "true"],
}
OUT_OF_RANGE = [  # (key, value, config classes) refused by the configs' own checks
    ("lr", "-1e-5", "both"), ("weight_decay", "-0.1", "both"), ("adam_beta1", "1.0", "both"),
    ("adam_beta2", "-0.5", "both"), ("adam_eps", "0", "both"), ("grad_clip", "-1", "both"),
    ("warmup_ratio", "1.0", "both"), ("init_std", "0", "both"), ("threads", "-2", "both"),
    ("checkpoint_every", "-1", "both"), ("keep_checkpoints", "-1", "both"), ("log_every", "0", "both"),
    ("max_nonfinite_steps", "-1", "both"), ("precision", '"fp16"', "both"), ("device", '"tpu"', "both"),
    ("export_dtype", '"int8"', "both"), ("model_preset", '"huge"', "both"), ("arch", "{hidden_size = -4}", "both"),
    ("arch", "{hiden_size = 64}", "both"), ("arch", '{hidden_size = "64"}', "both"),
    ("cutoff_len", "1", "sft"), ("epochs", "0", "sft"), ("epochs", "-1.0", "sft"), ("max_steps", "-3", "sft"),
    ("eval_every", "-1", "sft"), ("min_lr_ratio", "1.5", "sft"), ("global_batch", "0", "sft"),
    ("overlong", '"cut"', "sft"), ("bad_lines", '"ignore"', "sft"), ("batch_unit", '"docs"', "sft"),
    ("context_loss_weight", "-1.0", "sft"), ("budget_minutes", "-5", "sft"),
    ("temperature", "0", "rl"), ("samples_per_prompt", "1", "rl"), ("algo", '"dpo"', "rl"),
    ("loss_agg", '"token-sum"', "rl"), ("clip_low", "-0.2", "rl"), ("gamma", "0", "rl"), ("dual_clip", "0.5", "rl"),
    ("judge", '"llm"', "rl"), ("prompts_per_step", "0", "rl"), ("rollout_dtype", '"fp8"', "rl"),
]


def base_of(kind):
    return typing.get_origin(kind) or kind


def wrong_values(kind) -> list[str]:
    if isinstance(kind, type) or typing.get_origin(kind) in (list, dict):
        return WRONG_TYPE[base_of(kind)]
    args = [a for a in typing.get_args(kind) if a is not type(None)]  # X | None
    return [v for v in WRONG_TYPE[base_of(args[0])] if v != "null"]


@pytest.mark.parametrize("cls", [SFTConfig, RLConfig])
def test_configs_name_the_file_line_or_override_and_the_key(tmp_path, cls):
    rng = random.Random(5 if cls is SFTConfig else 6)
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    good = ['seed = 3', 'run_dir = "runs/x"', 'lr = 1e-5'] + (
        ['train_files = ["a.jsonl"]'] if cls is SFTConfig else ['questions = ["q.jsonl"]'])
    ranges = [(k, v) for k, v, which in OUT_OF_RANGE if which == "both" or which == ("sft" if cls is SFTConfig
                                                                                       else "rl")]
    for case in range(CASES):
        if case % 3 == 2:
            key, text = rng.choice(ranges)
        else:
            key = rng.choice(fields)
            text = rng.choice(wrong_values(hints[key]))
        if case % 2:  # an override after a good file
            path = tmp_path / f"c{case}.toml"
            path.write_text("\n".join(good) + "\n")
            with pytest.raises(run_config.RunConfigError) as e:
                run_config.load(cls, path, [f"{key}={text}"])
            message = str(e.value)
            assert message.startswith(f"override '{key}={text}': ") or message.startswith(
                f'override "{key}={text}": '), message
        else:  # a line of the file, among good ones (tables last, as TOML wants)
            lines = [line for line in good if not line.startswith(key + " ")]
            number = rng.randint(0, len(lines))
            lines.insert(number, f"{key} = {text}")
            path = tmp_path / f"c{case}.toml"
            path.write_text("\n".join(lines) + "\n")
            with pytest.raises(run_config.RunConfigError) as e:
                run_config.load(cls, path)
            assert str(e.value).startswith(f"{path}:{number + 1}: "), str(e.value)
        assert key in str(e.value), (key, str(e.value))


def test_broken_config_files_name_the_file_and_line(tmp_path):
    rng = random.Random(7)
    good = 'seed = 3\nlr = 1e-5\ntrain_files = ["a.jsonl", "b.jsonl"]\nprecision = "fp32"\n[arch]\nhidden_size = 64\n'
    encoded = good.encode()
    for case in range(CASES):
        path = tmp_path / f"c{case}.toml"
        kind = case % 3
        if kind == 0:  # cut short
            cut = rng.randrange(1, len(encoded))
            path.write_bytes(encoded[:cut])
        elif kind == 1:  # a byte that is not UTF-8
            at = rng.randrange(len(encoded))
            path.write_bytes(encoded[:at] + bytes([rng.randrange(0x80, 0x100)]) + encoded[at:])
        else:  # a random byte replaced
            at = rng.randrange(len(encoded))
            path.write_bytes(encoded[:at] + bytes([rng.randrange(32, 127)]) + encoded[at + 1:])
        try:
            cfg = run_config.load(SFTConfig, path)
        except run_config.RunConfigError as e:
            message = str(e)
            assert message.startswith(f"{path}"), message
            assert "line" in message or message.startswith(f"{path}:"), message
            continue
        # what still parses must hold exactly what the file says
        import tomllib
        values = tomllib.loads(path.read_text())
        for key, value in values.items():
            assert getattr(cfg, key) == (float(value) if isinstance(getattr(cfg, key), float) else value), key


def test_override_text_is_one_value(tmp_path):
    """A newline in an override does not smuggle in a second setting."""
    with pytest.raises(run_config.RunConfigError, match="seed = '1\\\\nlr = 2'"):
        run_config.load(SFTConfig, None, ["seed=1\nlr = 2"])
    assert run_config.load(SFTConfig, None, ["model=a\nlr = 2"]).model == "a\nlr = 2"
    with pytest.raises(run_config.RunConfigError, match="empty part"):
        run_config.load(SFTConfig, None, ["arch..hidden_size=3"])


# --- trajectory files ----------------------------------------------------------------------------------------------
def good_trajectory(rng: random.Random, i: int) -> dict:
    n = rng.randint(1, 12)
    mask = [rng.randint(0, 1) for _ in range(n)]
    t = Trajectory(question_id=f"q{i}", sample_index=rng.randint(0, 3), question="Who?", answers=["Bo"],
                   data_source="toy", prompt_ids=[rng.randrange(300) for _ in range(5)],
                   response_ids=[rng.randrange(300) for _ in range(n)], response_mask=mask,
                   rollout_logprobs=[-rng.random() if m else 0.0 for m in mask],
                   turns=[{"role": "assistant", "content": "<answer>Bo</answer>"}],
                   tool_calls=[ToolCallRecord(1, "search", {"query": ["Bo"]}, 0.1, True)], num_turns=1, answer="Bo",
                   termination="answer", reward=1.0, judge={"correct": True}, sampling={"temperature": 1.0},
                   policy_version=0)
    return t.to_dict()


TRAJECTORY_BAD = {
    "question_id": [MISSING, 3, None, []], "sample_index": [MISSING, "0", 1.5, None, True],
    "question": [3, None, SURROGATE], "answers": ["Bo", [3], None], "data_source": [3, []],
    "prompt_ids": [MISSING, "1 2", [1.5], [None], [-1], [True]], "response_ids": [None, ["a"], [-3]],
    "response_mask": [[2], "1", [None]], "rollout_logprobs": [["x"], [math.nan], [math.inf], None],
    "turns": ["x", [3], [{"role": 1, "content": "c"}], [{"content": "c"}]], "num_turns": ["1", 1.5],
    "answer": [3, ["Bo"]], "termination": [1], "elapsed_s": ["1s", [1]], "reward": ["1", math.nan, [1.0]],
    "judge": ["yes", [1]], "sampling": ["t=1"], "policy_version": ["0", 0.5],
    "tool_calls": ["x", [3], [{"turn": 1, "name": "s"}], [{"turn": "1", "name": "s", "arguments": {}}],
                   [{"turn": 1, "name": "s", "arguments": "q"}], [{"turn": 1, "name": "s", "arguments": {}, "x": 1}],
                   [{"turn": 1, "name": "s", "arguments": {}, "latency_s": "fast"}]],
}


def test_trajectory_files_name_the_line_and_field(tmp_path):
    rng = random.Random(8)
    for case in range(CASES):
        good = [dumps(good_trajectory(rng, i)) for i in range(rng.randint(0, 4))]
        if rng.random() < 0.2:
            row, cause = rng.choice(BROKEN_LINES)
            field = None
        else:
            record = good_trajectory(rng, case)
            field = rng.choice(sorted(TRAJECTORY_BAD))
            value = rng.choice(TRAJECTORY_BAD[field])
            if value is MISSING:
                del record[field]
            else:
                record[field] = value
                if field == "response_ids" and isinstance(value, list):  # keep the lengths equal
                    n = len(value)
                    record["response_mask"], record["rollout_logprobs"] = [0] * n, [0.0] * n
            row, cause = json.dumps(record, ensure_ascii=True, allow_nan=True).encode(), None
        content, bad_lines = lines_with(good, [(rng.randint(0, len(good)), row)])
        path = tmp_path / f"t{case}.jsonl"
        path.write_bytes(content)
        with pytest.raises(TrajectoryFileError) as e:
            read_trajectories(path)
        check_error(e.value, path, f"{path}:{bad_lines[0]}: ", field, cause)


def test_trajectory_lengths_must_agree(tmp_path):
    rng = random.Random(9)
    record = good_trajectory(rng, 0)
    record["rollout_logprobs"] = record["rollout_logprobs"][:-1]
    path = tmp_path / "t.jsonl"
    path.write_bytes(dumps(good_trajectory(rng, 1)) + b"\n" + dumps(record) + b"\n")
    with pytest.raises(TrajectoryFileError, match=r"t.jsonl:2: .*'rollout_logprobs'.* one entry per token"):
        read_trajectories(path)
    good = good_trajectory(rng, 2)
    path.write_bytes(b"\xef\xbb\xbf" + dumps(good) + b"\n")  # a byte-order mark is not part of the record
    assert read_trajectories(path)[0].to_dict() == good
