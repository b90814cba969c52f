import subprocess
import sys
import time

import pytest
import torch

from litere import run_config
from litere.train import checkpoint, distributed, sft
from litere.train.distributed import DistEnv
from litere.tokenizer import Tokenizer
from litere.weights import load_model
from model_utils import hf_twin, random_model, small_config
from sft_helpers import REPO, crash_in_step, losses, make_data, metrics, tiny_overrides

STEPS = dict(max_steps=6, checkpoint_every=2, keep_checkpoints=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ckpt"))


def config(data_dir, run_dir, **settings):
    return run_config.load(sft.SFTConfig, None, tiny_overrides(data_dir, run_dir=str(run_dir), **{**STEPS, **settings}))


@pytest.fixture(scope="module")
def reference(data_dir):
    """An uninterrupted run."""
    run_dir = data_dir / "reference"
    sft.train(config(data_dir, run_dir))
    return run_dir


def test_keeps_the_last_complete_checkpoints(reference):
    # Steps 2 and 4 are saved (the last step ends in the export instead); nothing temporary is left behind.
    assert [p.name for p in checkpoint.list_checkpoints(reference)] == ["step_00000002", "step_00000004"]
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    sft.train(config(data_dir=reference.parent, run_dir=reference.parent / "keep1", checkpoint_every=1,
                     keep_checkpoints=1, max_steps=3, export=False))
    assert [p.name for p in checkpoint.list_checkpoints(reference.parent / "keep1")] == ["step_00000002"]


def test_crash_then_resume_records_each_step_once_with_the_same_losses(data_dir, reference, tmp_path, monkeypatch):
    run_dir = tmp_path / "crashed"
    crash_in_step(monkeypatch, 6)  # after the checkpoint of step 4 and the record of step 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft.train(config(data_dir, run_dir))
    monkeypatch.undo()
    assert list(losses(run_dir)) == [1, 2, 3, 4, 5]
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # as if the crash had cut a record short
    (run_dir / "checkpoints" / ".tmp-step_00000006").mkdir()  # as if a save had been cut short
    sft.train(config(data_dir, run_dir))
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert not (run_dir / "checkpoints" / ".tmp-step_00000006").exists()
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert not (run_dir / "metrics.jsonl.tmp").exists()
    resumed, expected = losses(run_dir), losses(reference)
    assert list(resumed) == list(expected) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6)


def test_killed_process_resumes_with_the_same_losses(data_dir, reference, tmp_path):
    run_dir = tmp_path / "killed"
    args = ["--stage", "sft", *tiny_overrides(data_dir, run_dir=str(run_dir), **STEPS)]
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.list_checkpoints(run_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    _, stderr = process.communicate()
    assert process.returncode == -9, f"the run ended before it could be killed:\n{stderr}"
    sft.train(config(data_dir, run_dir))
    resumed, expected = losses(run_dir), losses(reference)
    assert list(resumed) == list(expected)
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6)


def test_hf_export_loads_in_transformers_and_litere(reference, data_dir):
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    final = reference / "final"
    ours = load_model(final, dtype=torch.float32)
    theirs = Qwen3ForCausalLM.from_pretrained(final, torch_dtype=torch.float32).eval()
    ids = torch.tensor(Tokenizer.from_dir(data_dir / "tok").encode("<|im_start|>user\nWho founded Ixo?<|im_end|>"))
    with torch.no_grad():
        expected = theirs(ids[None]).logits[0]
        got = ours.logits(ours(ids, torch.arange(len(ids))))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(final)("Who founded Ixo?")["input_ids"] == \
        Tokenizer.from_dir(final).encode("Who founded Ixo?")


def test_export_writes_the_trained_weights(tmp_path, data_dir):
    model = random_model(small_config(vocab_size=384))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    distributed.apply_activation_checkpointing(model)  # wrappers must not leak into the checkpoint's key names
    tokenizer = Tokenizer.from_dir(data_dir / "tok")
    out = checkpoint.export_hf(model, tmp_path / "final", tokenizer, str(data_dir / "tok"), DistEnv())
    loaded = load_model(out, dtype=torch.float32).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    with torch.no_grad():
        ids = torch.arange(12)
        torch.testing.assert_close(hf_twin(load_model(out, dtype=torch.float32))(ids[None]).logits[0],
                                   model.logits(model(ids, torch.arange(12))), atol=1e-5, rtol=1e-5)


def test_fine_tunes_from_a_hf_checkpoint(reference, tmp_path):
    """model=PATH starts from the checkpoint's weights (and tokenizer); with lr=0 the export equals the input."""
    start = reference / "final"
    cfg = run_config.load(sft.SFTConfig, None, tiny_overrides(reference.parent, run_dir=str(tmp_path), model=str(start),
                                                              model_preset="", tokenizer="", lr=0.0, max_steps=1))
    sft.train(cfg)
    assert losses(tmp_path)[1] < losses(reference)[1] - 1.0  # a trained model, not a fresh init
    before, after = load_model(start).state_dict(), load_model(tmp_path / "final").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "final" / "tokenizer.json").read_text() == (start / "tokenizer.json").read_text()
