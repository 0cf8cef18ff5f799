"""Time `ddlm.evaluate.protein.protein_report` on real proteins and print its JSON.

Reads a FASTA file (one sequence line per record), splits it at random (seeded) into 300 stand-in
"samples", a held-out set and a training set, all disjoint, and runs the full report. Since the
stand-in samples are real held-out proteins, the "samples" row should match the "natural" row up to
sampling noise, and both should be far from the "shuffled" floor.

    python scripts/bench_protein_metrics.py [--fasta acyp | FILE.fa] [--max-train 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ddlm.data.fasta import read_records
from ddlm.data.proteins import ACYP
from ddlm.data.sources import resolve
from ddlm.evaluate.protein import protein_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fasta", default="acyp", help="a FASTA file, or acyp (found as `ddlm train --data acyp` does)")
    ap.add_argument("--n-samples", type=int, default=300)
    ap.add_argument("--n-heldout", type=int, default=600)
    ap.add_argument("--max-train", type=int, default=5000)
    ap.add_argument("--n-align", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    seqs = read_records(resolve(ACYP) if args.fasta == "acyp" else args.fasta)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(seqs))
    n_s, n_h = args.n_samples, args.n_heldout
    samples = [seqs[i] for i in order[:n_s]]
    heldout = [seqs[i] for i in order[n_s : n_s + n_h]]
    train = [seqs[i] for i in order[n_s + n_h :]]
    t_read = time.perf_counter() - t0

    t1 = time.perf_counter()
    report = protein_report(samples, train, heldout, seed=args.seed, max_train=args.max_train, n_align=args.n_align)
    t_report = time.perf_counter() - t1

    report["bench"] = {
        "fasta": str(args.fasta),
        "n_records": len(seqs),
        "n_samples": len(samples),
        "n_heldout": len(heldout),
        "n_train": len(train),
        "read_split_s": round(t_read, 2),
        "protein_report_s": round(t_report, 2),
    }
    json.dump(report, sys.stdout, indent=2, allow_nan=False)
    print()
    print(f"protein_report wall time: {t_report:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
