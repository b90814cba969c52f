"""Writing a file at once: readers, and a process that crashes mid-write, see the old content or the new, never
half of it."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path, data: str | bytes) -> None:
    """Replace `path` by `data` (str is written as UTF-8): written to a temporary file beside it, flushed to disk,
    renamed over it. The temporary name carries the process id, so that processes writing the same file at once
    (the same rows, from two runs sharing a directory) do not rename each other's temporary file away."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
