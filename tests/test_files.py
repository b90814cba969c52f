"""litere.files.atomic_write: whole contents only, under concurrent writers and failed writes."""
import subprocess
import sys

import pytest

from litere.files import atomic_write
from sft_helpers import REPO

WRITER = """
import sys
from litere.files import atomic_write
for i in range(300):
    atomic_write(sys.argv[1], sys.argv[2] * 1000)
"""


def test_processes_writing_one_file_at_once_each_replace_it_whole(tmp_path):
    path = tmp_path / "rows.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), mark], cwd=REPO, stderr=subprocess.PIPE,
                                text=True) for mark in "ab"]
    for w in writers:
        assert w.wait(timeout=120) == 0, w.stderr.read()
    assert path.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no temporary file left behind


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write(path, "old\n")
    with pytest.raises(TypeError):
        atomic_write(path, 42)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    atomic_write(path, "naïve ✓\n")
    assert path.read_bytes() == "naïve ✓\n".encode("utf-8")
