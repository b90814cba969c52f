"""Training entry point: `torchrun train.py --stage sft --config configs/sft_4b.toml [key=value ...]`.

Also runs as plain `python train.py ...` (one process, no process group). Overrides are TOML literals or bare
strings: `lr=1e-4`, `train_files=["a.jsonl","b.json"]`, `model=runs/x/final`, `arch.num_hidden_layers=2`.
"""
import argparse
import sys

from litere import run_config

STAGES = ("sft", "rl1", "rl2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--config", help="TOML file of settings (a run directory's config.toml works too)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings that replace the config's")
    args = parser.parse_args(argv)
    if args.stage != "sft":
        print(f"train.py: stage {args.stage!r} is not implemented yet (only 'sft' is)", file=sys.stderr)
        return 2
    from litere.train import sft
    from litere.config import ConfigError
    from litere.train.sft_data import DataError
    from litere.weights import CheckpointError

    try:
        config = run_config.load(sft.SFTConfig, args.config, args.overrides)
        sft.train(config)
    except (run_config.RunConfigError, ConfigError, DataError, CheckpointError) as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
