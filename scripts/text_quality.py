"""Quality against sampling steps: generative perplexity (judged by a ddlm AR run on the same data)
of diffusion runs' samples at 8 to 1024 steps, with network evaluations on the x-axis.

    python scripts/text_quality.py --judge AR_RUN DIFFUSION_RUN [DIFFUSION_RUN ...] [--n 32] [--out quality]

Writes OUT.json and OUT.png and prints a Markdown table. The AR run's own samples (temperature 1)
are the reference row. Beside gen-ppl, each row has the mean unigram entropy of a sample's tokens
(bits): repetitive, degenerate text can reach a low gen-ppl, but not with the data's entropy.
A bd3lm run spreads the steps over its blocks (at least one per block), so its smallest step counts
collapse into one row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddlm.evaluate.text_quality import generative_perplexity, unigram_entropy
from ddlm.run import load_run
from ddlm.sampling import SampleSpec, sample_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="diffusion runs to sample")
    parser.add_argument("--judge", required=True, help="an AR run trained on the same data")
    parser.add_argument("--n", type=int, default=32, help="samples per point")
    parser.add_argument("--steps", default="8,16,32,64,128,256,512,1024")
    parser.add_argument("--out", default="quality")
    args = parser.parse_args()
    judge = load_run(args.judge)

    def row(run, steps) -> dict:
        length = run.config.net.max_len
        ids, nfe, seconds = sample_many(
            run.net, run.objective, args.n, length, SampleSpec(steps=steps), seed=0, device="cpu"
        )
        return {
            "steps": steps,
            "nfe": nfe,
            "gen_ppl": generative_perplexity(judge.net, judge.objective, ids),
            "entropy_bits": unigram_entropy(ids),
            "seconds": seconds,
        }

    results = {}
    for path in args.runs:
        run = load_run(path)
        length = run.config.net.max_len
        wanted = sorted({run.objective.steps_taken(int(s), length) for s in args.steps.split(",")})
        name = f"{run.config.objective} ({Path(path).name})"
        results[name] = []
        for steps in wanted:
            results[name].append(row(run, steps))
            r = results[name][-1]
            print(
                f"{name} steps {steps}: nfe {r['nfe']}, gen-ppl {r['gen_ppl']:.2f}, {r['seconds']:.1f} s",
                file=sys.stderr,
            )
    reference = row(judge, 128) | {"steps": "AR"}  # AR samples left to right; steps do not apply
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"diffusion": results, "ar_reference": reference}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for name, rows in results.items():
        ax.plot([r["nfe"] for r in rows], [r["gen_ppl"] for r in rows], "o-", label=name)
        for r in rows:
            ax.annotate(
                f"{r['steps']}", (r["nfe"], r["gen_ppl"]), fontsize=7, xytext=(2, 3), textcoords="offset points"
            )
    ax.axhline(reference["gen_ppl"], color="grey", ls="--", label=f"AR samples ({reference['nfe']} nfe)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample (labels: sampling steps)")
    ax.set_ylabel("generative perplexity (AR judge)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    print("| run | steps | nfe | gen-ppl | entropy (bits) | seconds |\n| --- | --- | --- | --- | --- | --- |")
    for name, rows in [*results.items(), ("AR judge's own samples", [reference])]:
        for r in rows:
            cells = [
                name,
                r["steps"],
                r["nfe"],
                f"{r['gen_ppl']:.2f}",
                f"{r['entropy_bits']:.2f}",
                f"{r['seconds']:.1f}",
            ]
            print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
