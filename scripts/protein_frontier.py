"""Family-hit rate against novelty for each decoding setting: the plot a protein designer picks a point on.

    python scripts/protein_frontier.py RUN [RUN ...] [--n 300] [--steps 128] [--out docs/protein_frontier]

For every run (diffusion or AR) and every setting of its decoding controls (temperature, nucleus, and
for masked diffusion the unmasking order), N fresh samples are judged against the run's training set
and its held-out split: the fraction that the family's profile HMM recognises (hmmsearch, E < 1e-5,
Z = N) and their novelty, 1 - the mean identity to their nearest training sequence (global alignment
against 5,000 training sequences). Natural held-out sequences are the reference point. Writes OUT.png,
OUT.json and prints a Markdown table; the HMM is built once (500 training sequences, FAMSA + hmmbuild).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddlm.domains import domain_from_config
from ddlm.evaluate.protein import build_family_hmm, hmm_hits, nearest_identity
from ddlm.ordering import ORDERS
from ddlm.plots import frontier_plot
from ddlm.run import load_run
from ddlm.sampling import SampleSpec, sample_many

# (label, temperature, top_p, order) for masked diffusion; AR takes the rows without an order
SETTINGS = [
    ("T 1", 1.0, 1.0, None),
    ("T 0.9", 0.9, 1.0, None),
    ("T 0.8", 0.8, 1.0, None),
    ("T 0.7", 0.7, 1.0, None),
    ("top-p 0.95", 1.0, 0.95, None),
    ("top-p 0.9", 1.0, 0.9, None),
    ("top-p 0.8", 1.0, 0.8, None),
    ("top-prob order", 1.0, 1.0, "top-prob"),
    ("top-margin order", 1.0, 1.0, "top-margin"),
]


def judge(samples: list[str], train: list[str], hmm, seed: int) -> dict:
    nn = nearest_identity(samples, train, max_train=5000, seed=seed)
    hits = hmm_hits(hmm, samples)
    return {"hmm_hit_fraction": sum(hits) / len(hits), "nearest_identity": nn["mean"], "novelty": 1 - nn["mean"]}


def sample_point(run, domain, setting, n: int, steps: int, seed: int) -> tuple[list[str], float]:
    label, temperature, top_p, order = setting
    spec = SampleSpec(steps=steps, temperature=temperature, top_p=top_p)
    if order is not None:
        spec.order = ORDERS[order]()
    spec = domain.framed(spec, run.net, n, seed)
    start = time.perf_counter()
    ids, _, _ = sample_many(run.net, run.objective, n, domain.length, spec, seed=seed, device="cpu")
    seconds = time.perf_counter() - start
    texts, valid = domain.decode(ids)
    return [t for t, v in zip(texts, valid, strict=True) if v], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="protein runs trained on the same data (diffusion or AR)")
    parser.add_argument("--n", type=int, default=300, help="samples per point")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/protein_frontier")
    args = parser.parse_args()
    first = load_run(args.runs[0])
    domain = domain_from_config(first.config.data, Path(args.runs[0]))
    train = domain.train_records()
    hmm = build_family_hmm(train, n_align=500, seed=args.seed)
    heldout = [domain.tokenizer().decode(row)[0] for row in domain.heldout()][: args.n]
    points = [{"run": "natural held-out", "setting": "", **judge(heldout, train, hmm, args.seed)}]
    for path in args.runs:
        run = load_run(path)
        run_domain = domain_from_config(run.config.data, Path(path))
        for setting in SETTINGS:
            if setting[3] is not None and not getattr(run.objective, "masked", False):
                continue  # an order needs a masked diffusion run
            torch.manual_seed(args.seed)
            samples, seconds = sample_point(run, run_domain, setting, args.n, args.steps, args.seed)
            point = {"run": f"{run.config.objective} ({Path(path).name})", "setting": setting[0]}
            point.update(judge(samples, train, hmm, args.seed), well_formed=len(samples) / args.n, seconds=seconds)
            points.append(point)
            print(f"{point['run']:28s} {point['setting']:18s} hits {point['hmm_hit_fraction']:.3f} "
                  f"novelty {point['novelty']:.3f}", flush=True)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"n": args.n, "steps": args.steps, "points": points}, indent=1))
    frontier_plot(points, out.with_suffix(".png"), args.n, args.steps)
    print("| run | setting | HMM hits | novelty (1 - nearest identity) | well formed | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in points:
        print(
            f"| {p['run']} | {p['setting']} | {p['hmm_hit_fraction']:.1%} | {p['novelty']:.3f} | "
            f"{p.get('well_formed', 1.0):.0%} | {p.get('seconds', float('nan')):.1f} |"
        )


if __name__ == "__main__":
    main()
