"""Tokenizer (tokenizer.json through `tokenizers`) and the Qwen3 chat layout rendered in Python.

The agent works token-in/token-out: it never re-renders history, it appends the ids of each new segment. The
helpers here produce those segments exactly as docs/protocol.md section 2 lays them out.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

# The exact system prompt of the LiteResearcher training data (Apache-2.0, simplexai-labs/LiteResearcher).
SYSTEM_PROMPT = (Path(__file__).with_name("system_prompt.txt")).read_text()
USER_PREFIX = " Question: "

SPECIAL_TOKENS = {
    "endoftext": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "tool_call": "<tool_call>",
    "tool_call_end": "</tool_call>",
    "tool_response": "<tool_response>",
    "tool_response_end": "</tool_response>",
    "think": "<think>",
    "think_end": "</think>",
}
GENERATION_PROMPT = "<|im_start|>assistant\n<think>\n"


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, source: str = "tokenizer"):
        self.hf = tokenizer
        self.source = source
        for name, text in SPECIAL_TOKENS.items():
            token_id = tokenizer.token_to_id(text)
            if token_id is None:
                raise ValueError(f"{source}: special token {text} is missing from the vocabulary")
            setattr(self, f"{name}_id", token_id)

    @classmethod
    def from_file(cls, path) -> Tokenizer:
        path = Path(path)
        try:
            return cls(HFTokenizer.from_file(str(path)), str(path))
        except Exception as e:
            if isinstance(e, ValueError) and str(path) in str(e):
                raise
            raise ValueError(f"{path}: cannot read tokenizer ({type(e).__name__}: {e})") from None

    @classmethod
    def from_dir(cls, path) -> Tokenizer:
        return cls.from_file(Path(path) / "tokenizer.json")

    @property
    def stop_token_ids(self) -> tuple[int, int]:
        """The tokens that end an assistant turn: <|im_end|> and <|endoftext|> (docs/protocol.md section 2)."""
        return self.im_end_id, self.endoftext_id

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, out_dir):
        """tokenizer.json plus the tokenizer_config.json that transformers needs to load it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(out / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIAL_TOKENS["im_end"],
                  "pad_token": SPECIAL_TOKENS["endoftext"], "bos_token": None, "add_bos_token": False,
                  "clean_up_tokenization_spaces": False, "model_max_length": 262144}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    # --- the chat layout ------------------------------------------------------------------------------------
    def prompt_ids(self, question: str, system: str = SYSTEM_PROMPT, user_prefix: str = USER_PREFIX) -> list[int]:
        return self.encode(render([{"role": "system", "content": system},
                                   {"role": "user", "content": user_prefix + question}], add_generation_prompt=True))

    def tool_response_ids(self, text: str) -> list[int]:
        """The tool result as one user turn, opening the next assistant turn (docs/protocol.md section 2)."""
        return self.encode(tool_response_turn(text))

    def encode_messages(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
        return self.encode(render(messages, add_generation_prompt))

    def encode_conversation(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Ids of a whole conversation and a mask that is 1 exactly on the tokens a policy generates.

        Segments are tokenized as the agent produces them: everything up to and including an assistant turn's
        opening `<think>\\n` is prompt (mask 0); the assistant's text and its closing `<|im_end|>` are sampled
        (mask 1); the newline after `<|im_end|>` opens the next turn (mask 0).
        """
        ids: list[int] = []
        mask: list[int] = []

        def add(segment: list[int], label: int):
            ids.extend(segment)
            mask.extend([label] * len(segment))

        prompt = ""  # rendered text waiting to be tokenized as one unsupervised segment
        for message in _merge_tools(messages):
            if message["role"] != "assistant":
                prompt += _turn(message) + "\n"
                continue
            body = message["content"]
            prompt += "<|im_start|>assistant\n"
            if body.startswith("<think>\n"):
                prompt, body = prompt + "<think>\n", body[len("<think>\n"):]
            add(self.encode(prompt), 0)
            add(self.encode(body) + [self.im_end_id], 1)
            prompt = "\n"
        add(self.encode(prompt), 0)
        return ids, mask


def _turn(message: dict) -> str:
    return f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>"


def _merge_tools(messages: list[dict]) -> list[dict]:
    """Consecutive `tool` messages become one user turn of <tool_response> blocks, as the Qwen3 template does."""
    merged: list[dict] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown message role {role!r} (expected system, user, assistant or tool)")
        if not isinstance(content, str):
            raise ValueError(f"message content must be a string, got {type(content).__name__} for role {role!r}")
        if role == "tool":
            block = tool_response_block(content)
            if merged and merged[-1].get("tool"):
                merged[-1]["content"] += "\n" + block
            else:
                merged.append({"role": "user", "content": block, "tool": True})
        else:
            merged.append({"role": role, "content": content})
    return merged


def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The Qwen3 layout: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per turn; the Thinking-2507 generation
    prompt opens the assistant turn with `<think>\\n`."""
    text = "".join(_turn(m) + "\n" for m in _merge_tools(messages))
    return text + GENERATION_PROMPT if add_generation_prompt else text


def tool_response_block(text: str) -> str:
    """One tool result as the user turn's content shows it."""
    return f"<tool_response>\n{text}\n</tool_response>"


def tool_response_turn(text: str) -> str:
    """The forced segment after an assistant turn: the tool result as a user turn, then the next assistant turn
    opened. Generation stopped on a stop token, so the newline that ends the assistant turn comes first."""
    return f"\n<|im_start|>user\n{tool_response_block(text)}<|im_end|>\n{GENERATION_PROMPT}"
