"""The curves and table of issue 27 from the runs of scripts/data_constrained.sh.

For every run RUNS/<objective>-<records>-s<seed>: the validation bound against epochs and minutes
(metrics.jsonl), the bound on the whole validation part at the best checkpoint (`ddlm eval --part
validation`, 4 time draws), the test bound at the best validation checkpoint (the run's summary), the exact
likelihood of masked diffusion as it samples with --order top-prob (`ddlm eval --likelihood exact`) beside
the bound on the same records, and the samples of the best checkpoint: profile-HMM hits and identity to the
nearest training record (`ddlm eval --samples`), and the fraction identical to a training record. Text
runs (DATA=tinystories in scripts/data_constrained.sh) have no HMM: their samples are measured by how
much of them is copied, the fraction of each sample's 32-character windows found verbatim in the
training text; and no exact likelihood (one network call a position: 256 a sequence).

    python scripts/data_constrained.py RUNS [--exact-sequences 300] [--out docs/data_constrained]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

# OBJECTIVE-RECORDS-sSEED[-dDROPOUT], as scripts/data_constrained.sh names its runs
RUN_NAME = re.compile(r"(?P<objective>[a-z0-9]+)-(?P<records>\d+|all)-s(?P<seed>\d+)(-d(?P<dropout>[0-9.]+))?$")


def dropout(m: re.Match) -> str:
    return m["dropout"] or "0.1"


def size_key(records: str) -> float:
    return float("inf") if records == "all" else int(records)


def ddlm(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "ddlm", *args, "--json", "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ddlm {' '.join(args)} failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def curve(run: Path) -> list[dict]:
    """Validation evaluations with their epoch and the minutes of training before them."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed, offset, last = {}, 0.0, 0.0
    for r in records:  # a resumed session counts its seconds from zero: carry on from the last one
        if "elapsed_s" in r:
            offset += last if r["elapsed_s"] < last else 0.0
            last = r["elapsed_s"]
            elapsed[r["step"]] = offset + r["elapsed_s"]
    return [
        {"step": r["step"], "epoch": r["epoch"], "minutes": elapsed.get(r["step"], float("nan")) / 60,
         "valid_bits": r["valid_bits_per_token"]}
        for r in records if "valid_bits_per_token" in r
    ]  # fmt: skip


def measure(run: Path, exact_sequences: int) -> dict:
    """The run's figures, measured once (kept in RUN/data_constrained.json, redone when the run moved on)."""
    summary = json.loads((run / "summary.json").read_text())
    kept = run / "data_constrained.json"
    if kept.is_file() and json.loads(kept.read_text())["steps"] == summary["steps"]:
        row = json.loads(kept.read_text())
    else:
        row = measure_afresh(run, summary, exact_sequences)
    if "valid_whole" not in row:  # runs measured before `ddlm eval --part validation`
        row["valid_whole"] = whole_validation(run)
    kept.write_text(json.dumps(row, indent=1))
    return row


def whole_validation(run: Path) -> dict:
    """The best checkpoint's bound on all of the validation part (training scores 256 of its records with
    one time draw: a noisier figure, and AR's exact against diffusion's one-draw estimate)."""
    result = ddlm("eval", str(run), "--part", "validation", "--time-samples", "4")
    return {"bits": result["bits_per_token"], "se": result.get("mc_standard_error", 0.0)}


def is_text(run: Path) -> bool:
    return json.loads((run / "config.json").read_text())["data"]["kind"] == "text"


def measure_afresh(run: Path, summary: dict, exact_sequences: int) -> dict:
    row = {
        "steps": summary["steps"],
        "minutes": (summary["seconds"] + earlier_seconds(run)) / 60,
        "epochs": summary["epochs"],
        "best": summary.get("best"),
        "test_bits": summary["heldout"]["bits_per_token"],
        "test_se": summary["heldout"].get("mc_standard_error", 0.0),
        "bound": summary["heldout"]["bound"],
    }
    objective = json.loads((run / "config.json").read_text())["objective"]
    # DUEL orders a whole sequence at once (not bd3lm's blocks), one call a position (a text sequence: 256)
    if summary["heldout"]["bound"] != "exact" and objective != "bd3lm" and not is_text(run):
        n = str(exact_sequences)
        exact = ddlm("eval", str(run), "--likelihood", "exact", "--max-sequences", n)
        bound = ddlm("eval", str(run), "--max-sequences", n, "--time-samples", "8")
        row["exact_subset"] = {
            "sequences": exact_sequences,
            "exact_bits": exact["bits_per_token"],
            "bound_bits": bound["bits_per_token"],
            "bound_se": bound["mc_standard_error"],
        }
    row["samples"] = text_copies(run) if is_text(run) else protein_samples(run)
    return row


def protein_samples(run: Path) -> dict:
    metrics = ddlm("eval", str(run), "--samples", str(run / "samples.fasta"))["samples"]
    train = set(json.loads((run / "split.json").read_text())["train_ids"])
    samples = [line.strip() for line in (run / "samples.fasta").read_text().splitlines() if not line.startswith(">")]
    train_seqs = train_sequences(run, train)
    return {
        "hmm_hits": metrics["hmm_hit_fraction"],
        "nearest_train_identity": metrics["nearest_train_identity"]["mean"],
        "near_copies": metrics["nearest_train_identity"]["frac_ge_0.9"],
        "identical_to_train": sum(s in train_seqs for s in samples) / len(samples),
    }


def text_copies(run: Path, width: int = 32) -> dict:
    """How much of the samples is training text: the mean fraction of a sample's `width`-character windows
    found verbatim in the training documents, and the fraction of samples with at least half copied."""
    from ddlm.data.text import load_splits

    data = json.loads((run / "config.json").read_text())["data"]
    splits = load_splits(data["spec"], data.get("max_docs"), data.get("validation_fraction", 0.0))
    seen = {d[i : i + width] for d in splits.train for i in range(len(d) - width + 1)}
    text = (run / "samples.txt").read_text(encoding="utf-8")
    samples = [s.split("\n", 1)[1] for s in re.split(r"^=== sample \d+ .*===$", text, flags=re.M) if s.strip()]
    fractions = []
    for sample in samples:
        windows = [sample[i : i + width] for i in range(len(sample) - width + 1)]
        fractions.append(sum(w in seen for w in windows) / max(1, len(windows)))
    return {
        "copied_windows": statistics.mean(fractions),
        "half_copied": sum(f >= 0.5 for f in fractions) / len(fractions),
        "window": width,
    }


def earlier_seconds(run: Path) -> float:
    """The seconds of a resumed run's earlier sessions (their summaries kept as summary-N.json)."""
    return sum(json.loads(p.read_text())["seconds"] for p in run.glob("summary-*.json"))


def train_sequences(run: Path, train_ids: set[str]) -> set[str]:
    """The sequences of the run's training records (from its data file)."""
    source = json.loads((run / "split.json").read_text())["source"]
    seqs, name = set(), None
    for line in Path(source).read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
        elif name in train_ids:
            seqs.add(line.strip())  # ACYP's records are one line each
    return seqs


def table(results: dict) -> str:
    lines = [
        "| model | dropout | train records | seed | steps | epochs | minutes | best at epoch | valid bits at best | "
        "whole validation part at best (s.e.) | test bits at best (s.e.) | exact / bound on the first N test records | "
        "HMM hits | nearest-train identity | >= 90% id. | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = lambda item: (size_key(RUN_NAME.match(item[0])["records"]), item[0])  # noqa: E731
    for name, r in sorted(results.items(), key=order):
        m = RUN_NAME.match(name)
        exact = r.get("exact_subset")
        exact_text = f"{exact['exact_bits']:.3f} / {exact['bound_bits']:.3f} (N={exact['sequences']})" if exact else "-"
        best = r["best"] or {}
        s = r["samples"]
        if "copied_windows" in s:  # a text run: the copied windows stand in the identity columns
            s = {"hmm_hits": math.nan, "nearest_train_identity": s["copied_windows"], "near_copies": s["half_copied"],
                 "identical_to_train": math.nan}  # fmt: skip
        lines.append(
            f"| {m['objective']} | {dropout(m)} | {m['records']} | {m['seed']} | {r['steps']} | {r['epochs']:.0f} | "
            f"{r['minutes']:.1f} | {best.get('epoch', float('nan')):.0f} | {best.get('bits', float('nan')):.3f} | "
            f"{r['valid_whole']['bits']:.3f} ({r['valid_whole']['se']:.3f}) | "
            f"{r['test_bits']:.3f} ({r['test_se']:.3f}) | {exact_text} | "
            f"{s['hmm_hits']:.0%} | {s['nearest_train_identity']:.2f} | {s['near_copies']:.0%} | "
            f"{s['identical_to_train']:.0%} |"
        )
    return "\n".join(lines)


def plot(curves: dict, titles: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({RUN_NAME.match(n)["records"] for n in curves}, key=size_key)
    fig, axes = plt.subplots(2, len(sizes), figsize=(5 * len(sizes), 7), dpi=120, squeeze=False)
    colours = {"ar": "tab:red", "sedd": "tab:blue", "mdlm": "tab:green", "bd3lm": "tab:purple"}
    for name, points in sorted(curves.items()):
        m = RUN_NAME.match(name)
        col = sizes.index(m["records"])
        style = ("-" if m["seed"] == "0" else "--") if m["dropout"] is None else ("-." if m["seed"] == "0" else ":")
        for row, key in enumerate(("epoch", "minutes")):
            ax = axes[row][col]
            ax.plot([p[key] for p in points], [p["valid_bits"] for p in points], style,
                    color=colours.get(m["objective"]),
                    label=f"{m['objective']} dropout {dropout(m)} seed {m['seed']}")  # fmt: skip
            ax.set_xlabel("epochs" if key == "epoch" else "minutes (one thread)")
            ax.set_ylabel("validation bits / token (EMA)")
            ax.set_title(titles[name])
            ax.grid(alpha=0.3)
    for ax in axes.flat:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--exact-sequences", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("docs/data_constrained"))
    args = parser.parse_args()
    # every run's curve; the table only of runs that finished (a run stopped by a signal has no summary)
    curved = sorted(
        p for p in args.runs.iterdir() if p.is_dir() and RUN_NAME.match(p.name) and (p / "metrics.jsonl").is_file()
    )
    runs = [p for p in curved if (p / "summary.json").is_file()]
    curves = {run.name: curve(run) for run in curved}
    results = {}
    for run in runs:
        print(f"measuring {run.name}...", file=sys.stderr)
        results[run.name] = measure(run, args.exact_sequences)
    groups: dict[str, list[dict]] = {}
    for name, r in results.items():
        m = RUN_NAME.match(name)
        groups.setdefault(f"{m['objective']}-{m['records']}-d{dropout(m)}", []).append(r)
    spread = {
        k: {
            "mean": statistics.mean(r["test_bits"] for r in rs),
            "seeds": [r["test_bits"] for r in rs],
            "valid_mean": statistics.mean((r["best"] or {}).get("bits", math.nan) for r in rs),
            "valid_seeds": [(r["best"] or {}).get("bits", math.nan) for r in rs],
            "valid_whole_seeds": [r["valid_whole"]["bits"] for r in rs],
        }
        for k, rs in groups.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"runs": results, "curves": curves, "groups": spread}, indent=1)
    )
    titles = {
        run.name: f"TinyStories characters, {RUN_NAME.match(run.name)['records']} training stories"
        if is_text(run)
        else f"ACYP, {RUN_NAME.match(run.name)['records']} training records, identity:0.5 split"
        for run in curved
    }
    plot(curves, titles, args.out.with_suffix(".png"))
    print(table(results))
    for k, v in sorted(spread.items()):
        tests, valids = ", ".join(f"{x:.4f}" for x in v["seeds"]), ", ".join(f"{x:.4f}" for x in v["valid_seeds"])
        whole = ", ".join(f"{x:.4f}" for x in v["valid_whole_seeds"])
        print(f"{k}: at best, test mean {v['mean']:.4f} ({tests}), validation mean {v['valid_mean']:.4f} ({valids}), "
              f"whole validation part {whole}")  # fmt: skip


if __name__ == "__main__":
    main()
