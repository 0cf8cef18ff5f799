"""Train several configurations for the same wall-clock, side by side, and tabulate their held-out bounds.

    python scripts/ablation.py --minutes 10 --out runs/ablation NAME=FLAGS [NAME=FLAGS ...] [--parallel 2]

e.g. `mdlm-count="--objective mdlm --train-form count"`. Every run trains on `--data` (acyp) with one
thread (OMP_NUM_THREADS=1), `--parallel` at a time, each for the same number of minutes, and is
evaluated on the whole held-out split as `ddlm train` ends (the EMA weights, 4 time samples: the bound
and its Monte-Carlo s.e. whatever the run trained on, as `ddlm eval RUN --time-samples 4` gives). A run
already in OUT/ablation.json is not trained again. Prints a Markdown table with the CPU, threads and
budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ddlm.bench import cpu_description


def ddlm(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ddlm", *args], stdout=subprocess.PIPE, text=True, env=env)


def train_batch(batch: list[tuple[str, list[str]]], args, env: dict) -> dict[str, dict]:
    """Train these runs side by side; returns each run's training summary (`ddlm train --json`)."""
    procs = {}
    for name, flags in batch:
        print(f"== {name}: {' '.join(flags)}", file=sys.stderr, flush=True)
        out = str(Path(args.out) / name)
        common = ["--data", args.data, "--out", out, "--time-budget", str(args.minutes), "--samples", "0"]
        procs[name] = ddlm("train", *common, "--quiet", "--json", *flags, env=env)
    summaries = {}
    for name, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{name}: ddlm train exited with {proc.returncode}")
        summaries[name] = json.loads(stdout)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", metavar="NAME=FLAGS")
    parser.add_argument("--data", default="acyp")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "ablation.json"
    results = json.loads(table_path.read_text()) if table_path.is_file() else {}
    configs = [(c.split("=", 1)[0], shlex.split(c.split("=", 1)[1]) if "=" in c else []) for c in args.configs]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo = [(name, flags) for name, flags in configs if name not in results]
    for start in range(0, len(todo), args.parallel):
        batch = todo[start : start + args.parallel]
        summaries = train_batch(batch, args, env)
        for name, flags in batch:
            held = summaries[name]["heldout"]  # what `ddlm eval RUN --time-samples 4` gives
            results[name] = {"flags": flags, "steps": summaries[name]["steps"], "minutes": args.minutes, **held}
        table_path.write_text(json.dumps(results, indent=1))
    print(f"{cpu_description()}; one thread per run, {args.parallel} runs at a time; {args.data}")
    print("| run | flags | minutes | steps | held-out bits/token | bound |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        se = f" +- {r['mc_standard_error']:.3f}" if "mc_standard_error" in r else ""
        print(
            f"| {name} | `{' '.join(r['flags'])}` | {r['minutes']:g} | {r['steps']} | "
            f"{r['bits_per_token']:.3f}{se} | {r['bound']} |"
        )


if __name__ == "__main__":
    main()
