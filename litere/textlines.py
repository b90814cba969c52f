"""Reading JSON-lines files as text: one place that names the file and line of a line that is not UTF-8."""
from __future__ import annotations

from pathlib import Path


def utf8_lines(path, error: type[Exception]):
    """(line number, text) of each non-blank line of `path`; a line that is not UTF-8 raises `error` naming it.
    A byte-order mark at the start is dropped."""
    with Path(path).open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{line_no}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                            f"{e.start + 1})") from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield line_no, line
