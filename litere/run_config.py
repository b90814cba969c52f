"""Run configs: a dataclass of plain fields, filled from a TOML file and `key=value` command-line overrides.

Values of overrides are read as TOML literals (`lr=2e-5`, `train_files=["a.jsonl"]`, `ac=true`); anything that is not
a TOML literal is taken as a string (`model=runs/x/final`). Dotted keys reach into table fields (`arch.vocab_size=512`).
The resolved config is written back as TOML, so a run directory's `config.toml` can be passed to `--config` again.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from pathlib import Path


class RunConfigError(ValueError):
    """A config file or override cannot be used; the message names the file, key or value at fault.
    `key` is the setting at fault, where one is."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def load(cls, path: str | Path | None = None, overrides: list[str] = (), *, file_subset: bool = False):
    """An instance of the dataclass `cls` from the TOML file `path` (optional) updated by `key=value` overrides.
    With `file_subset`, keys of the file that `cls` does not have are left out (a stage reading the settings it
    shares with another stage's config); unknown overrides are still an error. An error names where the bad value
    came from: `file:line` or the override."""
    values: dict = {}
    origins: dict[str, str] = {}  # top-level key -> where its value was set
    if path is not None:
        path = Path(path)
        text = _read_text(path)
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise RunConfigError(f"{path}: not valid TOML ({e})") from None
        lines = _key_lines(text)
        origins = {key: f"{path}:{lines[key]}" if key in lines else str(path) for key in values}
        if file_subset:
            known = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in values.items() if k in known}
    source = str(path) if path is not None else "defaults"
    for item in overrides:
        key, value = parse_override(item)
        target = values
        *tables, leaf = key.split(".")
        if not all(tables) or not leaf:
            raise RunConfigError(f"override {item!r}: {key!r} is not a key (empty part in a dotted key)")
        for table in tables:
            target = target.setdefault(table, {})
            if not isinstance(target, dict):
                raise RunConfigError(f"override {item!r}: {table!r} is not a table")
        target[leaf] = value
        origins[key.split(".")[0]] = f"override {item!r}"
    return from_dict(cls, values, source, origins)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise RunConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RunConfigError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x})") from None


def _key_lines(text: str) -> dict[str, int]:
    """The line of each top-level key (or table header) of a TOML text, as far as a line scan finds them."""
    lines: dict[str, int] = {}
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_-]+)", line)
        if header:
            in_table = True
            lines.setdefault(header.group(1), number)
            continue
        key = re.match(r"\s*\"?([A-Za-z0-9_-]+)\"?\s*[.=]", line)
        if key and not in_table:
            lines.setdefault(key.group(1), number)
    return lines


def parse_override(item: str) -> tuple[str, object]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RunConfigError(f"override {item!r}: expected key=value")
    try:
        parsed = tomllib.loads(f"value = {text}")
        value = parsed["value"] if parsed.keys() == {"value"} else text  # "1\nlr = 2" is one string, not two keys
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def from_dict(cls, values: dict, source: str = "config", origins: dict[str, str] | None = None):
    """`cls(**values)` with every value checked against its annotation; `origins` maps keys to where they were set
    (`file:line`, an override), which an error names; other errors name `source`."""
    origins = origins or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in hints]
    if unknown:
        hints_text = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            hints_text.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        # "file: unknown key(s) 'x' (line 3)": the file first, as for every error of a file
        where = sorted({origins.get(k, source).rsplit(":", 1)[0] if _has_line(origins.get(k, "")) else
                        origins.get(k, source) for k in unknown})
        lines = [f" (line {origins[k].rsplit(':', 1)[1]})" if _has_line(origins.get(k, "")) else "" for k in unknown]
        hints_text = [h + line for h, line in zip(hints_text, lines)]
        raise RunConfigError(f"{', '.join(where)}: unknown key(s) {', '.join(hints_text)}; known keys: "
                             f"{', '.join(names)}", key=unknown[0])
    kwargs = {k: _coerce(v, hints[k], k, origins.get(k, source)) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except RunConfigError as e:  # a check of the dataclass: name where the value at fault came from
        key = (e.key or _leading_key(str(e), hints) or "").split(".")[0] or None
        where = origins.get(key, source) if key else source
        raise RunConfigError(f"{where}: {e}", key=key) from None


def check_table(cls, values: dict, table: str) -> dict:
    """The `table` setting's values checked against the fields of the dataclass `cls` (names and types), without
    building one: `arch = {hidden_size = 64}` against ModelConfig."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            raise RunConfigError(f"{table}.{key}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f"; known keys: {', '.join(hints)}", key=table)
    return {k: _coerce(v, hints[k], f"{table}.{k}", "") for k, v in values.items()}


def _has_line(origin: str) -> bool:
    return not origin.startswith("override ") and origin.rpartition(":")[2].isdigit()


def _leading_key(message: str, hints: dict) -> str | None:
    """The setting a message like `lr=-1 must be ...` is about."""
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", message)
    return match.group(1) if match and match.group(1) in hints else None


def _coerce(value, kind, key: str, source: str):
    """`value` checked against the annotation `kind` (int, float, str, bool, list[str], dict, X | None)."""
    def bad(expected):
        return RunConfigError(f"{source + ': ' if source else ''}{key} = {_short(value)} ({type(value).__name__}), "
                              f"expected {expected}", key=key)

    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except RunConfigError:
                pass
        raise bad(" or ".join(getattr(o, "__name__", str(o)) for o in options))
    origin = typing.get_origin(kind)
    if origin is list:
        (item_kind,) = typing.get_args(kind) or (object,)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise bad(f"a list of {getattr(item_kind, '__name__', item_kind)}")
        return [_coerce(v, item_kind, key, source) for v in items]
    if kind is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad("a table")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        if "\0" in value:
            raise bad("a string without NUL characters")
        return value
    if kind is object:
        return value
    raise RunConfigError(f"{source}: {key} has an unsupported annotation {kind!r}", key=key)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def dump_toml(values: dict) -> str:
    """TOML text of a dict of scalars, lists of scalars and one level of tables; None values are left out."""
    lines, tables = [], []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value, key)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v, f'{name}.{k}')}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def _toml_value(value, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise RunConfigError(f"{key}: cannot write {type(value).__name__} values to TOML")


def save(config, path: str | Path):
    Path(path).write_text(dump_toml(to_dict(config)))
