"""benchmarks/diagnose_compiled_decode.py on the CPU: it finds the compiled decode step where the eager sampler is, and
puts the step back."""
import re
import sys
from pathlib import Path

from litere.sampler.decode_graph import CompiledDecode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import diagnose_compiled_decode as diagnose  # noqa: E402


def test_on_the_cpu_every_call_agrees_and_the_step_is_restored(capsys):
    original = CompiledDecode.__call__
    assert diagnose.main(["--device", "cpu"]) == 0
    assert CompiledDecode.__call__ is original
    out = capsys.readouterr().out
    assert re.search(r"^\| 0 \| \d+ \| \d+ \|", out, re.MULTILINE)  # a row per compiled call
    largest = dict(re.findall(r"(\w+ \w+) ([\d.e+-]+)", out.split("largest over all calls: ")[1].splitlines()[0]))
    assert set(largest) == {f"{what} {way}" for what in ("hidden", "logits") for way in ("formula", "kernels", "torch")}
    assert all(float(v) < 1e-4 for v in largest.values()), largest
    verdicts = [line for line in out.splitlines() if line.startswith("  request")]
    assert len(verdicts) == 7 and all("same tokens" in line for line in verdicts)
