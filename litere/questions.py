"""Question files: JSON lines and the LiteResearcher-Data parquet schema (docs/protocol.md sections 5 and 7).

JSON lines: `{"id", "question", "answers": [...] (or "answer": str | list), "data_source", "mask_url", "env"}`;
`env` (optional) is the environment of that question — a database path relative to the question file, or a URL —
and overrides the default one. Parquet rows: `prompt` (chat messages), `data_source`,
`reward_model.ground_truth.target` (answers), `extra_info.{index, question, mask_url}`; the mask URL falls back to
`extra_info.url`, then to the search tool's `tools_kwargs.search.create_kwargs.url` (under `extra_info` or at the
row's top level). Reading parquet needs pyarrow.
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .env import open_env
from .textlines import utf8_lines
from .tokenizer import USER_PREFIX


class QuestionFileError(ValueError):
    """A question file cannot be read; the message names the file, line or row and key at fault."""


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    data_source: str | None = None
    mask_url: str | None = None
    env: str | None = None  # resolved: an absolute database path or a URL


def load_questions(path, limit: int | None = None) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise QuestionFileError(f"{path}: no such question file")
    rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    seen: dict[str, str] = {}
    for where, q in rows:
        if q.id in seen:
            raise QuestionFileError(f"{where}: key 'id': question id {q.id!r} appears more than once "
                                    f"(first at {seen[q.id]})")
        seen[q.id] = where
    questions = [q for _, q in rows]
    return questions[:limit] if limit is not None else questions


def _text(value, where: str, key: str, *, optional: bool = False, empty: bool = False) -> str | None:
    """`value` as a string field: None where `optional` allows it; an empty one only where `empty` allows it;
    never one that holds an unpaired surrogate (it could not be written back as UTF-8)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        kind = "a string or null" if optional else "a string"
        raise QuestionFileError(f"{where}: key {key!r} must be {kind}, got {_kind(value)}")
    if not empty and not value.strip():
        raise QuestionFileError(f"{where}: key {key!r} is empty")
    _check_utf8(value, where, key)
    return value


def _check_utf8(value: str, where: str, key: str):
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QuestionFileError(f"{where}: key {key!r} holds an unpaired surrogate {value[e.start]!r} at "
                                f"character {e.start}") from None


def _kind(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {_short(value)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _answers(value, where: str) -> list[str]:
    """A string, a number (a year) or a non-empty list of them, as strings; where: `file:line: key 'answers'`."""
    items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise QuestionFileError(f"{where}: answers must be a string or a non-empty list of strings, got "
                                f"{_kind(value)}")
    out = []
    for i, a in enumerate(items):
        if isinstance(a, bool) or not isinstance(a, (str, int, float)) or (isinstance(a, float)
                                                                           and not math.isfinite(a)):
            raise QuestionFileError(f"{where}: answers must be a string or a non-empty list of strings; item {i} "
                                    f"is {_kind(a)}")
        a = str(a)
        if not a.strip():
            raise QuestionFileError(f"{where}: answers must not be empty; item {i} is {a!r}")
        try:
            a.encode("utf-8")
        except UnicodeEncodeError as e:
            raise QuestionFileError(f"{where}: item {i} holds an unpaired surrogate at character {e.start}"
                                    ) from None
        out.append(a)
    return out


def _env(value, base: Path, where: str) -> str | None:
    """where: `file:line`."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise QuestionFileError(f"{where}: key 'env': env must be a path or URL string, got {_kind(value)}")
    _check_utf8(value, where, "env")
    if value.startswith(("http://", "https://")):
        return value
    return str((base / value).resolve())


def portable_env(env: str | None, question_file) -> str | None:
    """`env` (as `load_questions` resolves it) the way a question file written at `question_file` should record
    it: a URL, None or a relative path as it is; a database path relative to the file's directory where the two
    share a directory below the filesystem root, so that a run directory moved or copied whole still finds its page
    stores; else the absolute path."""
    if env is None or env.startswith(("http://", "https://")) or not Path(env).is_absolute():
        return env
    base, path = Path(question_file).resolve().parent, Path(env)
    common = Path(os.path.commonpath([base, path]))
    return os.path.relpath(path, base) if common != Path(common.anchor) else env


def _id(value, where: str, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():  # a parquet column of ints that pandas made floats
        return str(int(value))
    if isinstance(value, float):
        raise QuestionFileError(f"{where}: key 'id' must be a string or an integer, got float {value!r}")
    return _text(value, where, "id")


def _read_jsonl(path: Path) -> list[tuple[str, Question]]:
    questions = []
    for line_no, line in utf8_lines(path, QuestionFileError):
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise QuestionFileError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise QuestionFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if "question" not in row:
            raise QuestionFileError(f"{where}: missing key 'question' (a string)")
        question = _text(row["question"], where, "question")
        if "answers" in row:
            answers = _answers(row["answers"], f"{where}: key 'answers'")
        elif "answer" in row:
            answers = _answers(row["answer"], f"{where}: key 'answer'")
        else:
            raise QuestionFileError(f"{where}: missing key 'answers' (or 'answer')")
        questions.append((where, Question(
            id=_id(row.get("id"), where, str(line_no)), question=question, answers=answers,
            data_source=_text(row.get("data_source"), where, "data_source", optional=True, empty=True),
            mask_url=_text(row.get("mask_url"), where, "mask_url", optional=True, empty=True) or None,
            env=_env(row.get("env"), path.parent, where))))
    return questions


def _read_parquet(path: Path) -> list[tuple[str, Question]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QuestionFileError(f"{path}: reading parquet needs pyarrow; install it with "
                                "`pip install pyarrow` (or `pip install -e '.[parquet]'`)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's errors: ArrowInvalid, OSError, ...
        raise QuestionFileError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    questions = []
    for row_no, row in enumerate(rows):
        where = f"{path}: row {row_no}"
        extra = _struct(row.get("extra_info"), where, "extra_info")
        reward_model = _struct(row.get("reward_model"), where, "reward_model")
        truth = reward_model.get("ground_truth")
        if isinstance(truth, dict):
            truth = truth.get("target")
        if truth is None:
            raise QuestionFileError(f"{where}: missing reward_model.ground_truth.target")
        question = _text(extra.get("question"), where, "extra_info.question", optional=True, empty=True)
        question = question if question and question.strip() else _question_from_prompt(row.get("prompt"), where)
        index = extra.get("index")
        questions.append((where, Question(
            id=_id(index, where, str(row_no)) if index is not None else str(row_no), question=question,
            answers=_answers(truth, f"{where}: reward_model.ground_truth.target"),
            data_source=_text(row.get("data_source"), where, "data_source", optional=True, empty=True),
            mask_url=_parquet_mask_url(row, extra, where))))
    return questions


def _struct(value, where: str, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise QuestionFileError(f"{where}: {key} must be a struct (an object), got {_kind(value)}")
    return value


def _parquet_mask_url(row: dict, extra: dict, where: str) -> str | None:
    """extra_info.mask_url, else extra_info.url, else tools_kwargs.search.create_kwargs.url (tools_kwargs under
    extra_info first, then at the top level); empty values count as absent."""
    candidates = [_text(extra.get("mask_url"), where, "extra_info.mask_url", optional=True, empty=True),
                  _text(extra.get("url"), where, "extra_info.url", optional=True, empty=True)]
    for tools in (extra.get("tools_kwargs"), row.get("tools_kwargs")):
        search = tools.get("search") if isinstance(tools, dict) else None
        create = search.get("create_kwargs") if isinstance(search, dict) else None
        candidates.append(create.get("url") if isinstance(create, dict) else None)
    return next((url for url in candidates if isinstance(url, str) and url), None)


def _question_from_prompt(prompt, where: str) -> str:
    users = [m.get("content") for m in (prompt if isinstance(prompt, list) else [])
             if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str) or not users[-1].removeprefix(USER_PREFIX).strip():
        raise QuestionFileError(f"{where}: neither extra_info.question nor a user message in prompt")
    return _text(users[-1].removeprefix(USER_PREFIX), where, "prompt")


class Environments:
    """The environment of each question: its own `env` if it names one, else the default; each opened once.

    Callable as `envs(question) -> env`, which is the form the agent takes.
    """

    def __init__(self, default: str | None = None, **settings):
        self.default, self.settings = default, settings
        self._opened: dict[str, object] = {}
        self._lock = threading.Lock()

    def __call__(self, question: Question):
        spec = question.env or self.default
        if spec is None:
            raise ValueError(f"question {question.id!r} names no env and no default environment was given (--env)")
        with self._lock:
            if spec not in self._opened:
                self._opened[spec] = open_env(spec, **self.settings)
            return self._opened[spec]


def world_env_settings(question_path) -> dict:
    """The tool-output sizes recorded in the world manifest beside a question file (`python -m litere.world
    build` writes one), or {} when there is none. A world database records them too; an HTTP environment needs
    them from here, so that evaluation sees the sizes the model was trained on."""
    manifest = Path(question_path).parent / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        settings = json.loads(manifest.read_text()).get("env_settings") or {}
    except (json.JSONDecodeError, AttributeError) as e:
        raise QuestionFileError(f"{manifest}: not a world manifest ({e})") from None
    if not isinstance(settings, dict):
        raise QuestionFileError(f"{manifest}: env_settings must be an object, got {settings!r}")
    return settings
