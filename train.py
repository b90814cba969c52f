"""Training entry point: `torchrun train.py --stage sft|rl1|rl2|filter --config FILE.toml [key=value ...]`.

    sft     supervised fine-tuning on agent trajectories (litere/train/sft.py)
    filter  the difficulty curriculum: K rollouts per question, keep those with 1..K-1 correct (litere/rl/curriculum.py)
    rl1     GRPO (or PPO) against the search world from the SFT model (litere/rl/loop.py; stage-1 defaults)
    rl2     the same loop with stage-2 defaults (longer responses, more turns, temperature 1.0)

Also runs as plain `python train.py ...` (one process, no process group). Overrides are TOML literals or bare
strings: `lr=1e-4`, `train_files=["a.jsonl","b.json"]`, `model=runs/x/final`, `arch.num_hidden_layers=2`.
"""
import argparse
import sys

from litere import run_config

STAGES = ("sft", "rl1", "rl2", "filter")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--config", help="TOML file of settings (a run directory's config.toml works too)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings that replace the config's")
    args = parser.parse_args(argv)
    from litere.config import ConfigError
    from litere.questions import QuestionFileError
    from litere.train.core import NonFiniteError
    from litere.train.sft_data import DataError
    from litere.weights import CheckpointError, CheckpointWriteError

    try:
        if args.stage == "sft":
            from litere.train import sft
            sft.train(run_config.load(sft.SFTConfig, args.config, args.overrides))
        elif args.stage == "filter":
            from litere.rl import config, curriculum
            # an RL stage's config works too: the filter takes the rollout settings it shares with it
            curriculum.run_filter(run_config.load(config.FilterConfig, args.config, args.overrides, file_subset=True))
        else:
            from litere.rl import config, loop
            stage_config = config.RLConfig if args.stage == "rl1" else config.RL2Config
            loop.train(run_config.load(stage_config, args.config, args.overrides))
    except (run_config.RunConfigError, ConfigError, DataError, CheckpointError, QuestionFileError) as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 2
    except (CheckpointWriteError, NonFiniteError) as e:  # the run stopped; its last checkpoint resumes it
        print(f"train.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from litere.train import distributed
    distributed.exit_process(main())
