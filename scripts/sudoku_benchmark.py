"""Solve rate per unmasking order on held-out generated Sudoku puzzles (Kim et al. 2025 on a CPU), and
with reward-guided particles (`--reward sudoku`: the satisfied unit constraints, issue 26).

    python scripts/sudoku_benchmark.py RUN [--givens 30] [--n 200] [--particles 4,16] [--reward-temperature L]
        [--remask-rate R] [--particle-flags '--order-noise 1']

Each particle row samples K particles per puzzle with the top-margin order, resamples them by the reward
of their denoised estimates when the effective sample size falls below K/2, and returns the particle with
the highest reward (`--pick best`). Prints a Markdown table (solved, cell accuracy, network calls per
puzzle, puzzles per second) and writes RUN/sudoku_benchmark_GIVENS.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def evaluate(args, *flags: str) -> dict:
    argv = [sys.executable, "-m", "ddlm", "eval", args.run, "--task", "sudoku", "--givens", str(args.givens)]
    argv += ["--n", str(args.n), "--steps", str(args.steps), "--json", "--quiet", *flags]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--givens", type=int, default=30)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=81)
    parser.add_argument("--orders", default="random,top-prob,top-margin")
    parser.add_argument("--particles", default="", help="comma-separated K for reward-guided rows (e.g. 4,16)")
    parser.add_argument(
        "--reward-temperature", type=float, default=1.0, help="lambda: one more constraint weighs e^(1/lambda)"
    )
    parser.add_argument("--remask-rate", type=float, help="also let the particles remask (ReMDM-style)")
    parser.add_argument(
        "--particle-flags",
        default="",
        help="more `ddlm eval` flags for the particle rows, e.g. '--order-noise 1' (particles that sample "
        "the same confident order and digits stay copies of each other)",
    )
    args = parser.parse_args()
    results = {}
    for order in filter(None, args.orders.split(",")):
        results[order] = evaluate(args, "--order", order)
        print(f"{order}: {results[order]['solved']:.1%}", file=sys.stderr, flush=True)
    for k in filter(None, args.particles.split(",")):
        flags = ["--order", "top-margin", "--reward", "sudoku", "--particles", k, "--pick", "best"]
        flags += ["--reward-temperature", str(args.reward_temperature)]
        if args.remask_rate is not None:
            flags += ["--remask-rate", str(args.remask_rate)]
        name = f"top-margin, reward sudoku, K={k}, lambda {args.reward_temperature}"
        name += f", remask {args.remask_rate}" if args.remask_rate else ""
        flags += shlex.split(args.particle_flags)
        name += f", {args.particle_flags}" if args.particle_flags else ""
        results[name] = evaluate(args, *flags)
        print(f"{name}: {results[name]['solved']:.1%}", file=sys.stderr, flush=True)
    out = Path(args.run) / f"sudoku_benchmark_{args.givens}.json"
    out.write_text(json.dumps(results, indent=1))
    print("| sampler | solved | cell accuracy | network calls per puzzle | puzzles/s | puzzles | mean givens |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        rate = r["n"] / r["seconds"] if r["seconds"] else float("nan")
        print(
            f"| {name} | {r['solved']:.1%} | {r['cell_accuracy']:.1%} | {r['nfe']} | {rate:.2f} | {r['n']} | "
            f"{r['givens_mean']:.1f} |"
        )


if __name__ == "__main__":
    main()
