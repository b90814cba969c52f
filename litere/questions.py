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
import threading
from dataclasses import dataclass
from pathlib import Path

from .env import open_env
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
    questions = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise QuestionFileError(f"{path}: question id {q.id!r} appears more than once")
        seen.add(q.id)
    return questions[:limit] if limit is not None else questions


def _answers(value, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(a, (str, int, float)) for a in value):
        return [str(a) for a in value]
    raise QuestionFileError(f"{where}: answers must be a string or a non-empty list of strings, got {value!r}")


def _env(value, base: Path, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise QuestionFileError(f"{where}: env must be a path or URL string, got {value!r}")
    if value.startswith(("http://", "https://")):
        return value
    return str((base / value).resolve())


def _read_jsonl(path: Path) -> list[Question]:
    questions = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise QuestionFileError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise QuestionFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if not isinstance(row.get("question"), str):
                raise QuestionFileError(f"{where}: missing key 'question' (a string)")
            if "answers" in row:
                answers = _answers(row["answers"], f"{where}: key 'answers'")
            elif "answer" in row:
                answers = _answers(row["answer"], f"{where}: key 'answer'")
            else:
                raise QuestionFileError(f"{where}: missing key 'answers' (or 'answer')")
            questions.append(Question(
                id=str(row.get("id", line_no)), question=row["question"], answers=answers,
                data_source=row.get("data_source"), mask_url=row.get("mask_url") or None,
                env=_env(row.get("env"), path.parent, f"{where}: key 'env'")))
    return questions


def _read_parquet(path: Path) -> list[Question]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QuestionFileError(f"{path}: reading parquet needs pyarrow; install it with "
                                "`pip install pyarrow` (or `pip install -e '.[parquet]'`)") from None
    questions = []
    for row_no, row in enumerate(pq.read_table(path).to_pylist()):
        where = f"{path}: row {row_no}"
        extra = row.get("extra_info") or {}
        truth = (row.get("reward_model") or {}).get("ground_truth")
        if isinstance(truth, dict):
            truth = truth.get("target")
        if truth is None:
            raise QuestionFileError(f"{where}: missing reward_model.ground_truth.target")
        question = extra.get("question") or _question_from_prompt(row.get("prompt"), where)
        questions.append(Question(
            id=str(extra["index"]) if extra.get("index") is not None else str(row_no), question=question,
            answers=_answers(truth, f"{where}: reward_model.ground_truth.target"),
            data_source=row.get("data_source"), mask_url=_parquet_mask_url(row, extra)))
    return questions


def _parquet_mask_url(row: dict, extra: dict) -> str | None:
    """extra_info.mask_url, else extra_info.url, else tools_kwargs.search.create_kwargs.url (tools_kwargs under
    extra_info first, then at the top level); empty values count as absent."""
    candidates = [extra.get("mask_url"), extra.get("url")]
    for tools in (extra.get("tools_kwargs"), row.get("tools_kwargs")):
        search = tools.get("search") if isinstance(tools, dict) else None
        create = search.get("create_kwargs") if isinstance(search, dict) else None
        candidates.append(create.get("url") if isinstance(create, dict) else None)
    return next((url for url in candidates if isinstance(url, str) and url), None)


def _question_from_prompt(prompt, where: str) -> str:
    users = [m.get("content") for m in (prompt or []) if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise QuestionFileError(f"{where}: neither extra_info.question nor a user message in prompt")
    return users[-1].removeprefix(USER_PREFIX)


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
