"""Sample quality against sequences per second, one domain per call: the plot that says whether
parallel decoding pays on this machine.

    python scripts/decoding_speed.py --ar AR_RUN --diffusion RUN [--students RUN ...] [--bd3lm RUN]
        [--judge AR_RUN] [--steps 8,16,...,1024] [--thresholds 0.9,0.7] [--n 200] [--threads 1]
        [--latency-threads 1,2] [--out docs/speed_proteins]

Rows: AR (left to right, its key/value cache); the diffusion run at each of --steps; the same run with
`--order confidence --threshold P` (at --confidence-steps); each distilled student at its own steps
(and the teacher at every student's steps, for comparison); BD3-LM at --bd3lm-steps with and without
its key/value cache. Every row draws --n samples in batches of --batch-size (quality and the
throughput figure) and --latency-n more one at a time (the latency figure: sequences per second when
each request is one sequence), at each of --latency-threads, the row's best figure plotted: a lone
request may use every core, and AR's small one-token calls may be fastest on one. Same seed, same
threads for every row.

Quality, by the runs' kind of data:
  proteins -- family-hit rate (hmmsearch against a profile HMM of 500 training sequences, E < 1e-5,
              Z = n), 3-mer Jensen-Shannon divergence and composition KL (bits) against the held-out split;
  text     -- generative perplexity under --judge (an AR run on the same data) and the mean unigram
              entropy of a sample's tokens (bits), so that a degenerate, repetitive row shows.
Writes OUT.json and OUT.png and prints a Markdown table with the CPU beside the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ddlm.bench import cpu_description
from ddlm.domains import domain_from_config
from ddlm.evaluate.protein import build_family_hmm, composition_kl, hmm_hits, kmer_js
from ddlm.evaluate.text_quality import generative_perplexity, unigram_entropy
from ddlm.ordering import ORDERS
from ddlm.plots import speed_quality_plot
from ddlm.run import load_run
from ddlm.sampling import SampleSpec, sample_many


@dataclass
class Row:
    label: str  # the run's role and name
    setting: str  # how it decodes
    path: str
    spec: SampleSpec


class ProteinJudge:
    quality = "hmm_hit_fraction"
    quality_label = "family-hit rate (profile HMM, E < 1e-5)"
    log_scale = False

    def __init__(self, domain, args):
        self.heldout = [domain.tokenizer().decode(row)[0] for row in domain.heldout()]
        self.hmm = build_family_hmm(domain.train_records(), n_align=500, seed=args.seed)

    def __call__(self, ids: torch.Tensor, domain) -> dict:
        texts, valid = domain.decode(ids)
        good = [t for t, v in zip(texts, valid, strict=True) if v]
        hits = hmm_hits(self.hmm, good) if good else []
        return {
            "well_formed": len(good) / len(texts),
            "hmm_hit_fraction": sum(hits) / len(texts),
            "kmer3_js_bits": kmer_js(good, self.heldout, 3) if good else float("nan"),
            "composition_kl_bits": composition_kl(good, self.heldout) if good else float("nan"),
        }


class TextJudge:
    quality = "gen_ppl"
    quality_label = "generative perplexity (AR judge)"
    log_scale = True

    def __init__(self, domain, args):
        if args.judge is None:
            raise SystemExit("text runs need --judge, an AR run trained on the same data")
        self.judge = load_run(args.judge)

    def __call__(self, ids: torch.Tensor, domain) -> dict:
        return {
            "gen_ppl": generative_perplexity(self.judge.net, self.judge.objective, ids),
            "entropy_bits": unigram_entropy(ids),
        }


JUDGES = {"protein": ProteinJudge, "text": TextJudge}


def plan(args) -> list[Row]:
    """Every row the flags ask for, in the order they are drawn."""
    name = lambda path: Path(path).name  # noqa: E731
    rows = [Row(f"AR ({name(args.ar)})", "left to right", args.ar, SampleSpec())]
    student_steps = sorted({load_run(p).config.sampling_steps for p in args.students})
    for steps in sorted(set(args.steps) | set(student_steps)):
        rows.append(Row(f"teacher ({name(args.diffusion)})", f"{steps} steps", args.diffusion, SampleSpec(steps=steps)))
    for threshold in args.thresholds:
        spec = SampleSpec(steps=args.confidence_steps, order=ORDERS["confidence"](threshold=threshold))
        rows.append(Row(f"confidence ({name(args.diffusion)})", f"P {threshold:g}", args.diffusion, spec))
    for path in args.students:
        steps = load_run(path).config.sampling_steps
        rows.append(Row(f"student ({name(path)})", f"{steps} steps", path, SampleSpec(steps=steps)))
    if args.bd3lm:
        for cached in (True, False):
            spec = SampleSpec(steps=args.bd3lm_steps, kv_cache=cached)
            setting = f"{args.bd3lm_steps} steps, {'cache' if cached else 'no cache'}"
            rows.append(Row(f"BD3-LM ({name(args.bd3lm)})", setting, args.bd3lm, spec))
    return rows


def draw(run, domain, spec: SampleSpec, n: int, batch_size: int, seed: int) -> tuple[torch.Tensor, int, float]:
    """(ids, largest nfe, seconds) of n samples in batches of batch_size, the length drawn first."""
    spec = domain.framed(replace(spec, batch_size=batch_size), run.net, n, seed)
    start = time.perf_counter()
    ids, nfe, _ = sample_many(run.net, run.objective, n, domain.length, spec, seed=seed, device="cpu")
    return ids, nfe, time.perf_counter() - start


def measure(row: Row, judge, args) -> dict:
    run = load_run(row.path)
    domain = domain_from_config(run.config.data, Path(row.path))
    ids, nfe, seconds = draw(run, domain, row.spec, args.n, args.batch_size, args.seed)
    point = {"run": row.label, "setting": row.setting, "nfe": nfe, **judge(ids, domain)}
    point["sequences_per_second"] = args.n / seconds
    # one sequence at a time, at each thread count: a lone request may use every core, and an
    # overhead-bound sampler (AR's one-token calls) may be fastest on fewer; each row gets its best
    by_threads = {}
    for threads in args.latency_threads:
        torch.set_num_threads(threads)
        _, _, latency_seconds = draw(run, domain, row.spec, args.latency_n, 1, args.seed + 1)
        by_threads[str(threads)] = args.latency_n / latency_seconds
    torch.set_num_threads(args.threads)
    best = max(by_threads, key=by_threads.get)
    point["sequences_per_second_one_at_a_time"] = by_threads[best]
    point["one_at_a_time_threads"] = int(best)
    point["one_at_a_time_by_threads"] = by_threads
    return point


SPEED_KEYS = ("sequences_per_second", "sequences_per_second_one_at_a_time", "one_at_a_time_threads",
              "one_at_a_time_by_threads")  # fmt: skip


def markdown(points: list[dict], judge, args) -> str:
    extra = [k for k in points[0] if k not in ("run", "setting", "nfe", *SPEED_KEYS)]
    head = ["run", "setting", "nfe", *extra, f"seq/s (batches of {args.batch_size}, {args.threads} thread(s))"]
    head += [f"seq/s (one at a time, {k} thread(s))" for k in args.latency_threads]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in points:
        cells = [p["run"], p["setting"], str(p["nfe"])]
        cells += [f"{p[k]:.1%}" if k in ("hmm_hit_fraction", "well_formed") else f"{p[k]:.3g}" for k in extra]
        cells += [f"{p['sequences_per_second']:.2f}"]
        cells += [f"{p['one_at_a_time_by_threads'][str(k)]:.2f}" for k in args.latency_threads]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ar", required=True, help="the AR run")
    parser.add_argument("--diffusion", required=True, help="the masked diffusion run (the students' teacher)")
    parser.add_argument("--students", nargs="*", default=[], help="distilled students (`ddlm distill`)")
    parser.add_argument("--bd3lm", help="a bd3lm run, sampled with and without its key/value cache")
    parser.add_argument("--judge", help="text: the AR run that scores samples (default --ar)")
    parser.add_argument("--steps", default="8,16,32,64,128,256,1024")
    parser.add_argument("--thresholds", default="0.9,0.5")
    parser.add_argument("--confidence-steps", type=int, default=32)
    parser.add_argument("--bd3lm-steps", type=int, default=128)
    parser.add_argument("--n", type=int, default=200, help="samples per row (quality, throughput)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--latency-n", type=int, default=8, help="samples per row drawn one at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads for the batched rows")
    parser.add_argument(
        "--latency-threads", default=None, help="thread counts tried one at a time, each row's best plotted (--threads)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="OUT.json and OUT.png")
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    args.thresholds = [float(p) for p in args.thresholds.split(",") if p]
    args.judge = args.judge or args.ar
    args.latency_threads = [int(k) for k in (args.latency_threads or str(args.threads)).split(",")]
    torch.set_num_threads(args.threads)
    first = load_run(args.diffusion)
    domain = domain_from_config(first.config.data, Path(args.diffusion))
    judge = JUDGES[domain.name](domain, args)
    points = []
    for row in plan(args):
        points.append(measure(row, judge, args))
        p = points[-1]
        print(f"{p['run']:32s} {p['setting']:20s} {judge.quality} {p[judge.quality]:.4g}  "
              f"{p['sequences_per_second']:.2f} seq/s", file=sys.stderr, flush=True)  # fmt: skip
    machine = f"{cpu_description()}, {args.threads} thread(s)"
    if args.latency_threads != [args.threads]:
        machine += f" (one at a time: the best of {', '.join(map(str, args.latency_threads))})"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine, "n": args.n, "batch_size": args.batch_size, "latency_n": args.latency_n,
               "quality": judge.quality, "points": points}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    title = f"{domain.name}: {args.n} samples per point; {machine}"
    speed_quality_plot(points, out.with_suffix(".png"), judge.quality, judge.quality_label, title, judge.log_scale)
    print(f"{machine}\n\n{markdown(points, judge, args)}")


if __name__ == "__main__":
    main()
