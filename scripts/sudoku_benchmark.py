"""Solve rate per unmasking order on held-out generated Sudoku puzzles (Kim et al. 2025 on a CPU).

    python scripts/sudoku_benchmark.py RUN [--givens 30] [--n 200]

Prints a Markdown table and writes RUN/sudoku_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--givens", type=int, default=30)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=81)
    args = parser.parse_args()
    results = {}
    for order in ["random", "top-prob", "top-margin"]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ddlm",
                "eval",
                args.run,
                "--task",
                "sudoku",
                "--order",
                order,
                "--givens",
                str(args.givens),
                "--n",
                str(args.n),
                "--steps",
                str(args.steps),
                "--json",
                "--quiet",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[order] = json.loads(out)
        print(f"{order}: {results[order]['solved']:.1%}", file=sys.stderr, flush=True)
    (Path(args.run) / "sudoku_benchmark.json").write_text(json.dumps(results, indent=1))
    print("| order | solved | cell accuracy | puzzles | mean givens |\n| --- | --- | --- | --- | --- |")
    for order, r in results.items():
        print(f"| {order} | {r['solved']:.1%} | {r['cell_accuracy']:.1%} | {r['n']} | {r['givens_mean']:.1f} |")


if __name__ == "__main__":
    main()
