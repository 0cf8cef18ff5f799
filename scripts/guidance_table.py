"""What steering buys and what it costs, on proteins: one table per property, every guidance mode.

    python scripts/guidance_table.py RUN --property 'charge>=5' [--n 100] [--steps 128] [--threads 1]
        [--particles 4,16 --reward-temperature 0.1]        # reward-guided particles (SMC), reward = the property
        [--particle-reward cap:5:charge]                    # ... or another reward (repeatable)
        [--cfg-run LABELLED_RUN --condition LABEL --cfg 1,3]  # classifier-free guidance
        [--predictor DIR --target LABEL --guidance 1,3 --approx taylor]  # predictor guidance
        [--json FILE] [--plot FILE.png]

Rows: RUN unguided, then each mode at each strength (and LABELLED_RUN unguided, its own base line).
Columns: the property's hit rate (with its binomial s.e.); family HMM hits (a profile HMM built from
500 of RUN's training records, hmmsearch E <= 1e-5 with Z = the row's sample count); novelty, the mean
identity of each sample to its nearest training record (5,000 of them), and near-copies, the fraction
at >= 90% identity; the 3-mer Jensen-Shannon divergence (bits) of the samples against the training
records that have the property, and against all training records; network calls per sample (nfe, all
particles together) and sequences per second on --threads threads. The SMC rows guide by the very
property they are scored on (the reward is the property's value, or with --particle-reward, e.g. the
value capped at the threshold); CFG and predictor guidance are
trained on labels computed from it. Prints Markdown; --json keeps the rows, --plot draws hit rate
against network calls. First it prints the natural floor of the 3-mer columns: what --n held-out natural
records score against the training records with the property and against all (`--floor-only`: just that).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
from pathlib import Path

import torch

import ddlm
from ddlm.data.fasta import read_records
from ddlm.device import cpu_vector_flags
from ddlm.evaluate.protein import build_family_hmm, hmm_hits, kmer_js, nearest_identity
from ddlm.guidance.rewards import parse_reward
from ddlm.rundir import HELDOUT_FASTA

PROPERTY = re.compile(r"^(?P<reward>[a-z]+)(?P<op>>=|<=)(?P<value>-?[0-9.]+)$")


def property_test(spec: str):
    """'charge>=5' -> (reward spec, texts -> list of bools)."""
    m = PROPERTY.match(spec)
    if m is None:
        raise SystemExit(f"--property {spec}: write REWARD>=VALUE or REWARD<=VALUE, e.g. charge>=5")
    reward, value = parse_reward(m["reward"]), float(m["value"])
    sign = 1 if m["op"] == ">=" else -1

    def has(texts: list[str]) -> list[bool]:
        return [sign * (v - value) >= 0 for v in reward(texts).tolist()]

    return m["reward"], has


def measure(name: str, texts: list[str], nfe: int, seconds: float, ref: dict) -> dict:
    """One row of the table."""
    hits = ref["has"](texts)
    near = nearest_identity(texts, ref["train"], max_train=5000)["per_sample"]
    n = len(texts)
    rate = sum(hits) / n
    return {
        "mode": name,
        "n": n,
        "hit_rate": rate,
        "hit_rate_se": math.sqrt(rate * (1 - rate) / n),
        "hmm_hits": sum(hmm_hits(ref["hmm"], texts)) / n,
        "novelty": sum(near) / n,
        "near_copies": sum(x >= 0.9 for x in near) / n,
        "js3_vs_property": kmer_js(texts, ref["train_with_property"], 3),
        "js3_vs_all": kmer_js(texts, ref["train"], 3),
        "nfe": nfe,
        "seq_per_s": n / seconds,
    }


def rows_to_run(args) -> list[tuple[str, str, dict]]:
    """(row name, run directory, sampling options) for every row asked for."""
    reward, _ = property_test(args.property)
    rows = [("unguided", args.run, {})]
    for spec in args.particle_reward or [reward]:
        for k in args.particles:
            options = {"reward": spec, "particles": k, "reward_temperature": args.reward_temperature}
            rows.append((f"SMC ({spec}), K = {k}, lambda = {args.reward_temperature}", args.run, options))
    if args.cfg_run:
        rows.append(("labelled run, unguided", args.cfg_run, {}))
        rows += [(f"CFG, gamma = {g}", args.cfg_run, {"condition": args.condition, "cfg": g}) for g in args.cfg]
    if args.predictor:
        for g in args.guidance:
            options = {"predictor": args.predictor, "target": args.target, "guidance": g, "guide_approx": args.approx}
            rows.append((f"predictor ({args.approx}), gamma = {g}", args.run, options))
    return rows


def reference(run: str, has) -> dict:
    model = ddlm.load(run)
    train = model.session.domain.train_records()
    with_property = [t for t, h in zip(train, has(train), strict=True) if h]
    return {"has": has, "train": train, "train_with_property": with_property, "hmm": build_family_hmm(train)}


def natural_floor(run: str, ref: dict, n: int, draws: int = 20, seed: int = 0) -> dict:
    """What natural records score on the 3-mer columns: n held-out records with the property against the
    training records with it, and n held-out records against all, averaged over `draws` draws. A sample
    of n natural records is the best a sampler can hope for; with few records that have the property the
    first is well above the second, whatever the sampler."""
    held = read_records(Path(run) / HELDOUT_FASTA)
    held_with = [t for t, h in zip(held, ref["has"](held), strict=True) if h]
    rng = random.Random(seed)
    js = lambda pool, against: [kmer_js(rng.sample(pool, n), against, 3) for _ in range(draws)]  # noqa: E731
    with_property, overall = js(held_with, ref["train_with_property"]), js(held, ref["train"])
    return {
        "n": n, "draws": draws, "heldout_with_property": len(held_with),
        "train_with_property": len(ref["train_with_property"]),
        "js3_vs_property": statistics.mean(with_property), "js3_vs_property_sd": statistics.stdev(with_property),
        "js3_vs_all": statistics.mean(overall), "js3_vs_all_sd": statistics.stdev(overall),
    }  # fmt: skip


def predictor_cost(row: dict) -> str:
    """The predictor's share of the calls, beside the network's: its passes and the sequences they read."""
    cost = row.get("predictor")
    return f" + {cost['calls']} predictor passes ({cost['inputs_per_sample']:,.0f} seq./sample)" if cost else ""


def markdown(rows: list[dict]) -> str:
    lines = [
        "| mode | hit rate | HMM hits | novelty | near-copies | 3-mer JS vs property / all | nfe | seq/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['hit_rate']:.0%} +- {r['hit_rate_se']:.0%} | {r['hmm_hits']:.0%} | "
            f"{r['novelty']:.3f} | {r['near_copies']:.1%} | {r['js3_vs_property']:.3f} / {r['js3_vs_all']:.3f} | "
            f"{r['nfe']}{predictor_cost(r)} | {r['seq_per_s']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.errorbar(r["nfe"], r["hit_rate"], yerr=r["hit_rate_se"], fmt="o")
        ax.annotate(r["mode"], (r["nfe"], r["hit_rate"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    low, high = min(r["nfe"] for r in rows), max(r["nfe"] for r in rows)
    ax.set_xlim(low / 1.3, high * 4)  # room for the labels on the right
    ax.set_ylim(-0.05, 1.08)
    ax.set_xlabel("network calls per sample (all particles)")
    ax.set_ylabel("samples with the property")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--property", required=True, help="REWARD>=VALUE, e.g. charge>=5 or gravy>=0")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    numbers = lambda kind: lambda s: [kind(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--particles", type=numbers(int), default=[])
    p.add_argument("--reward-temperature", type=float, default=0.1)
    p.add_argument(
        "--particle-reward",
        action="append",
        metavar="SPEC",
        help="the particles' reward (repeatable; default: the property's own, e.g. charge); cap:5:charge "
        "stops pushing once the threshold is reached",
    )
    p.add_argument("--cfg-run")
    p.add_argument("--condition")
    p.add_argument("--cfg", type=numbers(float), default=[1.0])
    p.add_argument("--predictor")
    p.add_argument("--target")
    p.add_argument("--guidance", type=numbers(float), default=[1.0])
    p.add_argument("--approx", default="taylor", help="predictor guidance's shift: exact or taylor (default)")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--floor-only", action="store_true", help="only the natural records' 3-mer JS (no sampling)")
    p.add_argument("--replot", metavar="JSON", help="only redraw --plot from a --json file of an earlier run")
    args = p.parse_args()
    if args.replot:
        record = json.loads(Path(args.replot).read_text())
        title = f"{record['property']}: {record['n']} samples a row, {record['steps']} steps"
        return plot(record["rows"], Path(args.plot), title)
    torch.set_num_threads(args.threads)
    _, has = property_test(args.property)
    ref = reference(args.run, has)
    floor = natural_floor(args.run, ref, args.n, seed=args.seed)
    print(
        f"natural floor, {args.n} held-out records a draw ({floor['draws']} draws): 3-mer JS against the "
        f"{floor['train_with_property']} training records with the property {floor['js3_vs_property']:.3f} "
        f"(sd {floor['js3_vs_property_sd']:.3f}), against all {floor['js3_vs_all']:.3f} "
        f"(sd {floor['js3_vs_all_sd']:.3f})",
        flush=True,
    )
    if args.floor_only:
        return
    results, models = [], {}
    for name, run, options in rows_to_run(args):
        model = models.setdefault(run, ddlm.load(run))
        out = model.sample(args.n, steps=args.steps, seed=args.seed, **options)
        row = measure(name, out.texts, out.nfe, out.seconds, ref)  # the sampler's own clock, as `ddlm sample`'s
        results.append({**row, "predictor": out.predictor, "run": run, "options": options})
        print(markdown(results[-1:]).splitlines()[-1], flush=True)
    cpu = ", ".join(cpu_vector_flags())
    print(f"\n{args.property}; {args.n} samples a row, {args.steps} steps, {args.threads} thread(s); CPU flags: {cpu}")
    print(markdown(results))
    if args.json:
        record = {"property": args.property, "n": args.n, "steps": args.steps, "threads": args.threads,
                  "cpu": cpu_vector_flags(), "rows": results, "natural_floor": floor}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1, default=str))
    if args.plot:
        plot(results, Path(args.plot), f"{args.property}: {args.n} samples a row, {args.steps} steps")


if __name__ == "__main__":
    main()
