"""Run configs: a dataclass of plain fields, filled from a TOML file and `key=value` command-line overrides.

Values of overrides are read as TOML literals (`lr=2e-5`, `train_files=["a.jsonl"]`, `ac=true`); anything that is not
a TOML literal is taken as a string (`model=runs/x/final`). Dotted keys reach into table fields (`arch.vocab_size=512`).
The resolved config is written back as TOML, so a run directory's `config.toml` can be passed to `--config` again.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path


class RunConfigError(ValueError):
    """A config file or override cannot be used; the message names the file, key or value at fault."""


def load(cls, path: str | Path | None = None, overrides: list[str] = (), *, file_subset: bool = False):
    """An instance of the dataclass `cls` from the TOML file `path` (optional) updated by `key=value` overrides.
    With `file_subset`, keys of the file that `cls` does not have are left out (a stage reading the settings it
    shares with another stage's config); unknown overrides are still an error."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise RunConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as e:
            raise RunConfigError(f"{path}: not valid TOML ({e})") from None
        if file_subset:
            known = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in values.items() if k in known}
    source = str(path) if path is not None else "defaults"
    for item in overrides:
        key, value = parse_override(item)
        target = values
        *tables, leaf = key.split(".")
        for table in tables:
            target = target.setdefault(table, {})
            if not isinstance(target, dict):
                raise RunConfigError(f"override {item!r}: {table!r} is not a table")
        target[leaf] = value
    return from_dict(cls, values, source)


def parse_override(item: str) -> tuple[str, object]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RunConfigError(f"override {item!r}: expected key=value")
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def from_dict(cls, values: dict, source: str = "config"):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in hints]
    if unknown:
        hints_text = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            hints_text.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RunConfigError(f"{source}: unknown key(s) {', '.join(hints_text)}; known keys: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], k, source) for k, v in values.items()})


def _coerce(value, kind, key: str, source: str):
    """`value` checked against the annotation `kind` (int, float, str, bool, list[str], dict, X | None)."""
    def bad(expected):
        return RunConfigError(f"{source}: {key} = {value!r} ({type(value).__name__}), expected {expected}")

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
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind is object:
        return value
    raise RunConfigError(f"{source}: {key} has an unsupported annotation {kind!r}")


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
