import subprocess
import sys

import pytest

from litere import run_config
from litere.train.sft import SFTConfig
from sft_helpers import REPO


def test_overrides_are_toml_literals_or_strings(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('lr = 1e-4\ntrain_files = ["a.jsonl"]\n[arch]\nhidden_size = 64\n')
    cfg = run_config.load(SFTConfig, path, ["lr=3e-5", "model=runs/x/final", "activation_checkpointing=true",
                                            "train_files=b.jsonl", "arch.num_hidden_layers=2", "epochs=2"])
    assert cfg.lr == 3e-5 and cfg.model == "runs/x/final" and cfg.activation_checkpointing is True
    assert cfg.train_files == ["b.jsonl"] and cfg.epochs == 2.0
    assert cfg.arch == {"hidden_size": 64, "num_hidden_layers": 2}


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = run_config.load(SFTConfig, None, ['train_files=["a \\"b\\".jsonl", "c.json"]', "adam_eps=1e-8",
                                            "arch.vocab_size=300", 'tokenizer=dir with spaces/tok'])
    run_config.save(cfg, tmp_path / "config.toml")
    assert run_config.load(SFTConfig, tmp_path / "config.toml") == cfg


@pytest.mark.parametrize("override,message", [
    ("learning_rate=1e-4", "unknown key(s) 'learning_rate'"),
    ("lr=fast", "lr = 'fast' (str), expected a number"),
    ("global_batch=1.5", "expected an integer"),
    ("precision=fp16", "precision='fp16': expected one of"),
    ("compile_blocks=maybe", "compile_blocks='maybe': expected one of"),
    ("think_layout=strict", "think_layout='strict': expected one of"),
    ("noequals", "expected key=value"),
])
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(run_config.RunConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_config.load(SFTConfig, None, [override])


def test_unknown_key_suggests_the_closest(tmp_path):
    (tmp_path / "c.toml").write_text("warmup_ratios = 0.1\n")
    with pytest.raises(run_config.RunConfigError, match=r"c.toml: unknown key.*did you mean 'warmup_ratio'"):
        run_config.load(SFTConfig, tmp_path / "c.toml")


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_reports_unknown_stages_and_bad_settings():
    result = cli("--stage", "rl9")
    assert result.returncode == 2 and "invalid choice: 'rl9'" in result.stderr
    result = cli("--stage", "sft", "--config", str(REPO / "configs" / "sft_4b.toml"), "lr=oops")
    assert result.returncode == 2 and "lr = 'oops'" in result.stderr


@pytest.mark.parametrize("name", ["sft_4b.toml", "demo_sft.toml"])
def test_shipped_configs_load(name):
    cfg = run_config.load(SFTConfig, REPO / "configs" / name)
    if name == "sft_4b.toml":  # docs/protocol.md section 6
        assert (cfg.lr, cfg.warmup_ratio, cfg.global_batch, cfg.batch_unit, cfg.cutoff_len, cfg.epochs) == (
            2e-5, 0.1, 128, "sequences", 65536, 1.0)
        assert cfg.precision == "bf16" and cfg.activation_checkpointing and cfg.model.endswith("Qwen3-4B-Thinking-2507")
