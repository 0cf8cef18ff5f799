"""Held-out bits against training budget for several models: the plot and table of `ablation.py` runs
made at several budgets.

    python scripts/budget_curve.py runs/b3 runs/b10 runs/b20 runs/b60 --reference ar \
        --out docs/diffusion_vs_ar.png

Each folder is an `ablation.py --out` of one budget (its ablation.json); a run name that appears in
several of them is one line of the plot. Prints a Markdown table of bits per token (with the MC s.e.
of a bound) and, for every run, its ratio to the --reference run of the same budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddlm.bench import cpu_description
from ddlm.plots import budget_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="ablation.py output folders, one per budget")
    parser.add_argument("--reference", default="ar", help="the run every ratio is taken against")
    parser.add_argument("--only", nargs="*", help="the run names to show (default: every one)")
    parser.add_argument("--out", default="docs/diffusion_vs_ar.png")
    args = parser.parse_args()
    tables = [json.loads((Path(f) / "ablation.json").read_text()) for f in args.folders]
    names = list(dict.fromkeys(name for table in tables for name in table))
    names = [n for n in names if not args.only or n in args.only]
    series = {
        name: [(t[name]["minutes"], t[name]["bits_per_token"], t[name].get("mc_standard_error", 0.0))
               for t in tables if name in t]
        for name in names
    }  # fmt: skip
    title = f"ACYP held-out; {cpu_description()}; one thread per run, two runs at a time"
    budget_plot(series, Path(args.out), title)
    minutes = sorted({m for points in series.values() for m, _, _ in points})
    print(f"{title}\n")
    print("| run | " + " | ".join(f"{m:g} min" for m in minutes) + " |")
    print("|" + " --- |" * (len(minutes) + 1))
    for name in names:
        cells = []
        for m in minutes:
            table = next((t for t in tables if name in t and t[name]["minutes"] == m), None)
            if table is None:
                cells.append("")
                continue
            r = table[name]
            se = f" +- {r['mc_standard_error']:.3f}" if "mc_standard_error" in r else ""
            ratio = (
                f" ({r['bits_per_token'] / table[args.reference]['bits_per_token']:.3f}x)"
                if args.reference in table
                else ""
            )
            cells.append(f"{r['bits_per_token']:.3f}{se}{ratio}, {r['steps']} steps")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
