"""Sudoku as conditional generation: the givens are clamped, the blanks are unmasked in a chosen order.

A puzzle counts as solved only if all 81 cells are right; cell accuracy is over the blank cells.
"""

from __future__ import annotations

import torch

from ..sampling import SampleSpec, sample_many


def solve(net, objective, puzzles: torch.Tensor, spec: SampleSpec, *, seed: int, device, amp=None, progress=None):
    """puzzles [n, 81] with -1 at blanks -> (predicted grids [n, 81], largest nfe, seconds)."""
    spec.clamp = puzzles >= 0
    spec.clamp_values = puzzles.clamp(min=0)
    return sample_many(
        net, objective, len(puzzles), puzzles.shape[1], spec, seed=seed, device=device, amp=amp, progress=progress
    )


def score(predictions: torch.Tensor, solutions: torch.Tensor, puzzles: torch.Tensor) -> dict:
    blank = puzzles < 0
    right = predictions == solutions
    return {
        "solved": right.all(-1).double().mean().item(),
        "cell_accuracy": (right & blank).sum().item() / max(blank.sum().item(), 1),
        "n": len(puzzles),
        "givens_mean": (~blank).sum(-1).double().mean().item(),
    }
