"""Quality against sampling steps: generative perplexity (judged by a ddlm AR run on the same data)
of a diffusion run's samples at 8 to 1024 steps, with network evaluations on the x-axis.

    python scripts/text_quality.py DIFFUSION_RUN AR_RUN [--n 32] [--out quality]

Writes OUT.json and OUT.png and prints a Markdown table. The AR run's own samples (temperature 1)
are the reference row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddlm.evaluate.text_quality import generative_perplexity
from ddlm.run import load_run
from ddlm.sampling import SampleSpec, sample_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("ar_run")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", default="8,16,32,64,128,256,512,1024")
    parser.add_argument("--out", default="quality")
    args = parser.parse_args()
    diffusion, judge = load_run(args.run), load_run(args.ar_run)
    length = diffusion.config["net"]["max_len"]
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        ids, nfe, seconds = sample_many(
            diffusion.net, diffusion.objective, args.n, length, SampleSpec(steps=steps), seed=0, device="cpu"
        )
        ppl = generative_perplexity(judge.net, judge.objective, ids)
        rows.append({"steps": steps, "nfe": nfe, "gen_ppl": ppl, "seconds": seconds})
        print(f"steps {steps}: nfe {nfe}, gen-ppl {ppl:.2f}, {seconds:.1f} s", file=sys.stderr, flush=True)
    ids, nfe, seconds = sample_many(judge.net, judge.objective, args.n, length, SampleSpec(), seed=0, device="cpu")
    reference = {
        "steps": "AR",
        "nfe": nfe,
        "gen_ppl": generative_perplexity(judge.net, judge.objective, ids),
        "seconds": seconds,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"diffusion": rows, "ar_reference": reference}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([r["nfe"] for r in rows], [r["gen_ppl"] for r in rows], "o-", label=f"{diffusion.config['objective']}")
    for r in rows:
        ax.annotate(f"{r['steps']} steps", (r["nfe"], r["gen_ppl"]), fontsize=7)
    ax.axhline(reference["gen_ppl"], color="grey", ls="--", label=f"AR samples ({reference['nfe']} nfe)")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel("generative perplexity (AR judge)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    print("| steps | nfe | gen-ppl | seconds |\n| --- | --- | --- | --- |")
    for r in [*rows, reference]:
        print(f"| {r['steps']} | {r['nfe']} | {r['gen_ppl']:.2f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
