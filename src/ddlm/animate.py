"""The denoising process as a GIF: positions resolve from the mask to tokens over the steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

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


def animate(history: list[torch.Tensor], out: Path, alphabet: str, vocab_size: int, max_frames: int = 120) -> Path:
    """history: the [B, L] states after each step. Frames where nothing changed are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
