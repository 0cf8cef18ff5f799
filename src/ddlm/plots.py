"""Every picture ddlm draws: loss curves, the bench's scaling plot, sample composition, the denoising GIF.

matplotlib is imported inside each function with the Agg backend, so importing this module costs
nothing and no function needs a display.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .data.proteins import RESIDUES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(metrics_path: Path, out: Path) -> None:
    """PNG of the training and held-out (or validation) bits per token against step."""
    plt = _pyplot()
    curves: dict[str, list] = {"train": [], "heldout": [], "valid": []}
    if not metrics_path.is_file():  # a run shorter than one logging interval
        return
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line)
        for part, points in curves.items():
            if f"{part}_bits_per_token" in rec:
                points.append((rec["step"], rec[f"{part}_bits_per_token"]))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    labels = {
        "train": ("-", "train (one time sample per sequence)"),
        "heldout": ("o-", "held-out (EMA weights)"),
        "valid": ("o-", "validation (EMA weights)"),
    }
    for part, points in curves.items():
        if points:
            style, label = labels[part]
            ax.plot(*zip(*points, strict=True), style, label=label, alpha=0.7 if part == "train" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("bound, bits per token")
    ax.grid(alpha=0.3)
    if any(curves.values()):
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_scaling(by_length: list[dict], by_batch: list[dict], out: Path, batch_length: int, steps: int) -> None:
    """Two log-log panels of microseconds per token: training and cached sampling, vs length and vs batch."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, points, key, xlabel in (
        (axes[0], by_length, "length", "sequence length (batch reduced for long sequences)"),
        (axes[1], by_batch, "batch", f"batch size (length {batch_length})"),
    ):
        x = [p[key] for p in points]
        ax.plot(x, [1e6 / p["train"]["tokens_per_s"] for p in points], "o-", label="training step")
        ax.plot(x, [1e6 / p["sampling"]["tokens_per_s"] for p in points], "s-", label=f"{steps}-step cached sampling")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, labels=[str(v) for v in x])  # the measured points, as plain numbers
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("microseconds per token (trained or generated)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def composition_plot(samples: list[str], natural: list[str]):
    """Residue composition and length histograms of samples beside held-out natural sequences."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.2))
    x = np.arange(len(RESIDUES))
    for k, (name, seqs) in enumerate([("samples", samples), ("held-out natural", natural)]):
        text = "".join(seqs)
        freq = np.array([text.count(a) for a in RESIDUES], dtype=float) / max(len(text), 1)
        ax1.bar(x + (k - 0.5) * 0.4, freq, width=0.4, label=name)
        ax2.hist([len(s) for s in seqs], bins=30, alpha=0.6, density=True, label=name)
    ax1.set_xticks(x, list(RESIDUES))
    ax1.set_title("amino-acid composition")
    ax1.legend()
    ax2.set_title("length")
    ax2.legend()
    return fig


# Residue classes (hydrophobic, aromatic, polar, positive, negative, special) get related colours, so the
# animation shows structure forming, not just noise turning into letters.
RESIDUE_GROUPS = {
    "AVILM": (0.95, 0.65, 0.15),
    "FWY": (0.80, 0.45, 0.05),
    "STNQ": (0.30, 0.70, 0.35),
    "KRH": (0.20, 0.45, 0.85),
    "DE": (0.85, 0.20, 0.25),
    "CGP": (0.60, 0.40, 0.75),
    "X": (0.5, 0.5, 0.5),
}


def colour_table(alphabet: str, vocab_size: int) -> np.ndarray:
    """RGB for each token id, then the mask (index vocab_size) in light grey; markers and padding dark."""
    table = np.full((vocab_size + 1, 3), 0.15)
    cmap = np.random.default_rng(0).uniform(0.2, 0.9, size=(vocab_size, 3))  # any other alphabet
    for i, c in enumerate(alphabet):
        table[i] = next((rgb for group, rgb in RESIDUE_GROUPS.items() if c in group), cmap[i])
    table[vocab_size] = (0.88, 0.88, 0.88)
    return table


def denoising_gif(
    history: list[torch.Tensor], out: Path, alphabet: str, vocab_size: int, max_frames: int = 120
) -> Path:
    """history: the [B, L] states after each step. Frames where nothing changed are skipped."""
    plt = _pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter

    frames = [history[0]] + [h for prev, h in zip(history, history[1:], strict=False) if not torch.equal(prev, h)]
    if len(frames) > max_frames:  # keep first and last, thin the middle evenly
        keep = np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))
        frames = [frames[i] for i in keep]
    table = colour_table(alphabet, vocab_size)
    B, L = frames[0].shape
    fig, ax = plt.subplots(figsize=(min(12, 2 + L / 12), 1 + B * 0.35), dpi=90)
    image = ax.imshow(table[frames[0].numpy()], aspect="auto", interpolation="nearest")
    ax.set_xlabel("position")
    ax.set_ylabel("sample")
    title = ax.set_title("")

    def update(k):
        image.set_data(table[frames[k].numpy()])
        masked = (frames[k] == vocab_size).float().mean().item()
        title.set_text(f"frame {k + 1}/{len(frames)}: {masked:.0%} masked")
        return image, title

    anim = FuncAnimation(fig, update, frames=len(frames), blit=False)
    anim.save(out, writer=PillowWriter(fps=12))
    plt.close(fig)
    return out


def frontier_plot(points: list[dict], out: Path, n: int, steps: int) -> None:
    """Family-hit rate (profile HMM) against novelty (1 - identity to the nearest training sequence),
    one colour per run, each point a decoding setting; natural held-out sequences as a star."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    runs = list(dict.fromkeys(p["run"] for p in points))
    for i, run in enumerate(runs):
        mine = [p for p in points if p["run"] == run]
        x, y = [p["novelty"] for p in mine], [p["hmm_hit_fraction"] for p in mine]
        natural = run == "natural held-out"
        ax.scatter(x, y, s=140 if natural else 36, marker="*" if natural else "o", label=run, color=f"C{i}")
        for p in mine:
            ax.annotate(p["setting"], (p["novelty"], p["hmm_hit_fraction"]), fontsize=7, alpha=0.8,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("novelty: 1 - mean identity to the nearest training sequence")
    ax.set_ylabel("family-hit rate (profile HMM, E < 1e-5)")
    ax.set_title(f"{n} samples per point, {steps} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def plain_log_ticks(axis) -> None:
    """Ticks at 1, 2, 5 x 10^k in plain numbers on a log axis: on a range narrower than a decade
    matplotlib labels every minor tick (the labels overlap) or none but one power of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def speed_quality_plot(
    points: list[dict], out: Path, quality: str, quality_label: str, title: str, log_quality: bool = False
) -> None:
    """Sample quality (`quality` of each point) against sequences per second, one colour per run, each
    point a decoding setting: left, sampled in batches (throughput); right, one sequence at a time
    (latency). Speed on a log axis, and quality too where `log_quality` (a perplexity)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=120, sharey=True)
    runs = list(dict.fromkeys(p["run"] for p in points))
    for ax, speed, what in (
        (axes[0], "sequences_per_second", "in batches"),
        (axes[1], "sequences_per_second_one_at_a_time", "one sequence at a time"),
    ):
        for i, run in enumerate(runs):
            mine = [p for p in points if p["run"] == run]
            ax.plot([p[speed] for p in mine], [p[quality] for p in mine], "o-", label=run, color=f"C{i}", ms=5)
            for p in mine:
                ax.annotate(p["setting"], (p[speed], p[quality]), fontsize=7, alpha=0.8,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_xlabel(f"sequences per second, {what}")
        ax.grid(alpha=0.3)
    if log_quality:
        axes[0].set_yscale("log")
        plain_log_ticks(axes[0].yaxis)
    axes[0].set_ylabel(quality_label)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def budget_plot(series: dict[str, list[tuple[float, float, float]]], out: Path, title: str) -> None:
    """Held-out bits per token against training minutes, one line per model: (minutes, bits, MC s.e.)
    points, the s.e. as error bars (zero for an exact NLL); minutes on a log axis."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (name, points) in enumerate(series.items()):
        points = sorted(points)
        minutes, bits, se = zip(*points, strict=True)
        ax.errorbar(minutes, bits, yerr=se, marker="o", capsize=3, label=name, color=f"C{i}")
    ax.set_xscale("log")
    ticks = sorted({m for points in series.values() for m, _, _ in points})
    ax.set_xticks(ticks, [f"{m:g}" for m in ticks])
    ax.xaxis.set_minor_locator(NullLocator())  # only the budgets are marked
    ax.set_xlabel("training minutes (one thread)")
    ax.set_ylabel("held-out bits per residue (bound)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
