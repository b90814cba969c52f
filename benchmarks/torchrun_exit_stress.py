"""Do two-process `torchrun train.py --stage sft` runs end cleanly on a busy machine? Runs the same 3-step tiny run
(2 gloo processes, from scratch, the data of tests/sft_helpers.py) `--runs` times in each of two ways, alternating,
while `--busy` busy loops load the CPUs, and counts the runs whose launcher did not exit 0:
- `train.py` as it is (its workers end through litere.train.distributed.exit_process),
- the baseline: the same `train.main` in a script that ends through the interpreter's teardown (`sys.exit`), where
  gloo's threads can abort a worker after a successful run ("terminate called without an active exception").

    python benchmarks/torchrun_exit_stress.py --runs 40 --busy 2

The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from sft_helpers import make_data, run_python, tiny_overrides  # noqa: E402

TEARDOWN = f"""import sys
sys.path.insert(0, {str(REPO)!r})
import train
sys.exit(train.main())
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the runs")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="torchrun_exit_stress-"))
    make_data(tmp)
    (tmp / "teardown.py").write_text(TEARDOWN)
    scripts = {"train.py": str(REPO / "train.py"), "teardown (baseline)": str(tmp / "teardown.py")}
    failures: dict[str, list] = {name: [] for name in scripts}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        for i in range(args.runs):
            for name, script in scripts.items():
                overrides = tiny_overrides(tmp, run_dir=str(tmp / f"run{i}-{name[:5]}"),
                                           max_steps=3, global_batch=3, pack_tokens=512, context_loss_weight=0.5)
                result = run_python([script, "--stage", "sft", *overrides], nproc=2)
                if result.returncode:
                    lines = [line for line in result.stderr.splitlines() if line.strip()]
                    failures[name].append({"run": i, "returncode": result.returncode,
                                           "first_stderr_line": lines[0][:200] if lines else ""})
            print(f"run {i + 1}/{args.runs}: failed so far " + ", ".join(f"{n} {len(f)}" for n, f in
                                                                         failures.items()), flush=True)
    finally:
        for process in busy:
            process.kill()
    print(json.dumps({"runs_each": args.runs, "busy": args.busy,
                      "failed": {name: len(f) for name, f in failures.items()}, "failures": failures}))


if __name__ == "__main__":
    main()
