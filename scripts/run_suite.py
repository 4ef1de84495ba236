"""Train, evaluate, report and precompute the suites of configs/suite/ (what `make suite` runs).

    python scripts/run_suite.py configs/suite/smollm2-135m.yaml configs/suite/gemma3-270m.yaml
    python scripts/run_suite.py configs/suite/gemma3-270m.yaml --stop-after 200000   # one sitting of a suite

Every step is skipped when its output is there, so running it again resumes a killed or stopped suite:
training from its last checkpoint, evaluation for SAEs without metrics.json, precompute from its shards.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sae_core.evaluation.evaluate_run import METRICS_FILE
from sae_core.features.schema import DB_FILE
from sae_core.options import load_config_file
from sae_core.runs.run_folder import RunDir

PRECOMPUTE = ["--tokens", "32k", "--saes", "L*/3R,L*/3M,L*/3A"]
"""The browsable sample: every third layer, all three sites, statistics on 32k held-out tokens."""


def sae_explorer(*args: str) -> None:
    command = [sys.executable, "-m", "sae_core.cli", *args]
    print("$ sae-explorer " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def run_suite(config: Path, stop_after: int | None) -> bool:
    """One suite, as far as it goes; False when training stopped early (`stop_after`)."""
    out = Path(load_config_file(config)["out"])
    run = RunDir(out)
    if (run.read() or {}).get("status") != "complete":
        # --no-eval: evaluation comes next either way, and a stopped sitting must not evaluate
        sae_explorer("train", "--config", str(config), "--no-eval",
                     *(["--stop-after", str(stop_after)] if stop_after else []))
        if (run.read() or {}).get("status") != "complete":
            print(f"{out}: stopped as asked; run this again to continue", flush=True)
            return False
    if any(not (folder / METRICS_FILE).is_file() for folder in run.sae_dirs()):
        sae_explorer("eval", str(out))
    sae_explorer("report", str(out))
    if not (out / DB_FILE).is_file():
        sae_explorer("precompute", str(out), *PRECOMPUTE)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path, help="suite configs, e.g. configs/suite/*.yaml")
    parser.add_argument("--stop-after", type=int, help="stop training after the checkpoint at this many tokens per SAE")
    args = parser.parse_args()
    for config in args.configs:
        try:
            if not run_suite(config, args.stop_after):
                return 0
        except subprocess.CalledProcessError as failed:  # the command has said why; say how to go on
            print(f"error: `sae-explorer {failed.cmd[3]}` failed for {config} (exit {failed.returncode}); "
                  "fix what it reported and run this again: finished steps are not redone", file=sys.stderr)
            return failed.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
