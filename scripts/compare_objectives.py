"""Train every objective on the same data with the same network and CPU budget, then compare them.

    python scripts/compare_objectives.py --data acyp --minutes 5 --out runs/compare

For each objective: held-out bits per token (NELBO, or exact NLL for AR), sampling speed (64 samples,
128 steps; AR samples left to right), and the fraction of well-formed samples. Writes
OUT/compare.json and prints a Markdown table. Runs are sequential so each gets the whole machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    "sedd (absorbing)": ["--objective", "sedd"],
    "mdlm": ["--objective", "mdlm"],
    "d3pm (absorbing, T=1000)": ["--objective", "d3pm"],
    "sedd (uniform)": ["--objective", "sedd", "--process", "uniform"],
    "ar": ["--objective", "ar"],
}


def ddlm(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "ddlm", *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="acyp")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--only", nargs="*", help="a subset of: " + ", ".join(CONFIGS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "compare.json").read_text()) if (out / "compare.json").is_file() else {}
    for name, flags in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        run = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("=", "")
        print(f"== {name}: training {args.minutes} min", file=sys.stderr, flush=True)
        train = json.loads(
            ddlm(
                "train",
                "--data",
                args.data,
                "--out",
                str(run),
                "--preset",
                args.preset,
                "--time-budget",
                str(args.minutes),
                "--samples",
                "0",
                "--quiet",
                "--json",
                *flags,
            )
        )
        held = json.loads(ddlm("eval", str(run), "--json", "--quiet", "--time-samples", "4"))
        sample = json.loads(ddlm("sample", str(run), "--n", "64", "--steps", "128", "--json", "--quiet"))
        results[name] = {
            "bits_per_token": held["bits_per_token"],
            "bound": held["bound"],
            "mc_standard_error": held.get("mc_standard_error"),
            "steps_trained": train["steps"],
            "samples_per_s": len(sample["samples"]) / sample["seconds"],
            "nfe": sample["nfe"],
            "valid_fraction": sum(sample["valid"]) / len(sample["valid"]),
        }
        (out / "compare.json").write_text(json.dumps(results, indent=1))
    print(
        f"| objective | held-out bits/token | bound | steps in {args.minutes:g} min | samples/s (128 steps) "
        "| nfe | well-formed samples |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        se = f" ± {r['mc_standard_error']:.3f}" if r.get("mc_standard_error") else ""
        print(
            f"| {name} | {r['bits_per_token']:.3f}{se} | {r['bound']} | {r['steps_trained']} | "
            f"{r['samples_per_s']:.1f} | {r['nfe']} | {r['valid_fraction']:.0%} |"
        )


if __name__ == "__main__":
    main()
