"""benchmarks/diagnose_compiled_decode.py: it reproduces the CUDA test's model and workload, and on the CPU finds the
compiled decode step where the eager sampler is."""
import re
import sys
from pathlib import Path

import torch

from litere.sampler.decode_graph import CompiledDecode
from model_utils import random_model, small_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import diagnose_compiled_decode as diagnose  # noqa: E402
import test_sampler_compiled  # noqa: E402


def test_the_script_builds_the_tests_model_and_runs_its_workload():
    ours, theirs = diagnose.test_model("cpu"), random_model(small_config(vocab_size=diagnose.VOCAB), seed=21)
    assert ours.config == theirs.config
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), name
    assert (diagnose.GREEDY, diagnose.SAMPLED) == (test_sampler_compiled.GREEDY, test_sampler_compiled.SAMPLED)
    from litere.sampler import Sampler
    assert (diagnose.workload(Sampler(ours, max_cache_tokens=4096, block_size=8))
            == test_sampler_compiled.agent_like_workload(Sampler(theirs, max_cache_tokens=4096, block_size=8)))


def test_on_the_cpu_every_call_agrees_and_the_step_is_restored(capsys):
    original = CompiledDecode.__call__
    assert diagnose.main(["--device", "cpu"]) == 0
    assert CompiledDecode.__call__ is original
    out = capsys.readouterr().out
    largest = dict(re.findall(r"(\w+ \w+) ([\d.e+-]+)", out.split("largest over all calls: ")[1].splitlines()[0]))
    assert set(largest) == {f"{what} {way}" for what in ("hidden", "logits") for way in ("formula", "kernels", "torch")}
    assert all(float(v) < 1e-4 for v in largest.values()), largest
    verdicts = [line for line in out.splitlines() if line.startswith("  request")]
    assert len(verdicts) == 7 and all("same tokens" in line for line in verdicts)
