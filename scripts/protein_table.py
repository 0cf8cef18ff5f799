"""One table of protein runs: held-out bits per residue, sample quality and sampling speed, beside
natural held-out and shuffled sequences.

    python scripts/protein_table.py RUN [RUN ...] [--n 300] [--steps 128] [--threads 1]

Each run needs `ddlm eval RUN --json` (RUN/eval.json: the held-out bound) and
`ddlm eval RUN --task proteins --n N --steps S` (RUN/protein_metrics.json: the sample metrics with the
natural and shuffled reference rows). Sampling speed is the eval's own timing of its samples when it
ran on --threads threads, else measured here: N fresh samples at S steps on --threads threads, the
run's default sampler. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddlm.domains import domain_from_config
from ddlm.run import load_run
from ddlm.rundir import EVAL, PROTEIN_METRICS
from ddlm.sampling import SampleSpec, sample_many

COLUMNS = (
    "| sequences | held-out bits/residue | bound | well formed | length W1 | composition KL | 3-mer JS | HMM hits "
    "| nearest-train identity | pairwise identity | samples/s |"
)


def row(name: str, metrics: dict, bits: str, bound: str, speed: str) -> str:
    m = metrics
    well_formed = m.get("well_formed", m.get("validity"))
    return (
        f"| {name} | {bits} | {bound} | {well_formed:.0%} | {m['length_w1']:.2f} | {m['composition_kl_bits']:.4f} | "
        f"{m['kmer_js_bits']['3']:.3f} | {m['hmm_hit_fraction']:.1%} | {m['nearest_train_identity']['mean']:.3f} | "
        f"{m['mean_pairwise_identity']:.3f} | {speed} |"
    )


def samples_per_second(path: str, n: int, steps: int) -> float:
    run = load_run(path)
    domain = domain_from_config(run.config.data, Path(path))
    spec = domain.framed(SampleSpec(steps=steps), run.net, n, 0)
    start = time.perf_counter()
    sample_many(run.net, run.objective, n, domain.length, spec, seed=0, device="cpu")
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=300, help="samples timed per run")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [COLUMNS, "|" + " --- |" * (COLUMNS.count("|") - 1)]
    reference = None
    for path in args.runs:
        metrics = json.loads((Path(path) / PROTEIN_METRICS).read_text())
        held = json.loads((Path(path) / EVAL).read_text())
        reference = reference or metrics
        se = f" +- {held['mc_standard_error']:.3f}" if "mc_standard_error" in held else ""
        timed = metrics["settings"].get("sampling_seconds")  # measured by the eval that drew the samples
        if timed is not None and metrics["settings"].get("threads") == args.threads:
            speed = f"{metrics['samples']['n'] / timed:.1f}"
        else:
            speed = f"{samples_per_second(path, args.n, args.steps):.1f}"
        name = f"{held['objective']} ({Path(path).name})"
        lines.append(row(name, metrics["samples"], f"{held['bits_per_token']:.3f}{se}", held["bound"], speed))
    lines.insert(2, row("natural held-out", reference["natural"], "", "", ""))
    lines.insert(3, row("shuffled natural", reference["shuffled"], "", "", ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
