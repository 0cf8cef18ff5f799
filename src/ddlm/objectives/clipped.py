"""Clipped masking rates for block diffusion (BD3-LM, Arriola et al. 2025, section 4: "clipped schedules
for low-variance gradients" and their data-driven choice).

BD3-LM's bound draws a block's masking rate r uniformly in [0, 1]. Near r = 0 a block has one masked
token and weight n_b / 1, near r = 1 it is all mask and tells the network little about the prefix; both
ends make the gradient noisy. The clipped estimator draws r ~ U[beta, omega] instead. In the count form
used here (k_b of the block's n_b moving positions masked, weight n_b / k_b):

    r = beta + (omega - beta) u,  u ~ U[0, 1),   k_b = floor(r n_b) + 1   (r < 1, so k_b <= n_b),

so P(k) = |[beta, omega) cap [(k - 1) / n_b, k / n_b)| / (omega - beta); [0, 1] is the bound's own law,
uniform on 1..n_b. A clipped interval reweights the noise levels: it is not the bound, and evaluation
always reports the bound (r over all of [0, 1]).

"Data-driven" (`auto`): at every evaluation the interval is chosen again from `CANDIDATES`, the one
whose per-sequence estimate (per token) varies least over the evaluation records, each drawn once
with the same noise for every candidate; the paper searches intervals of fixed widths at a fixed stride
the same way, by the variance of the validation loss.
"""

from __future__ import annotations

import argparse

import torch

FULL = (0.0, 1.0)
AUTO = "auto"
# the full interval and intervals of widths 0.5 and 0.75 at a stride of 0.125
CANDIDATES = (FULL,) + tuple((b / 8, b / 8 + w) for w in (0.5, 0.75) for b in range(int((1 - w) * 8) + 1))


def parse_mask_rates(text: str) -> tuple[float, float] | str:
    """`full`, `auto` or `BETA:OMEGA` with 0 <= BETA < OMEGA <= 1; argparse.ArgumentTypeError otherwise."""
    if text in ("full", AUTO):
        return FULL if text == "full" else AUTO
    try:
        beta, omega = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not full, auto or BETA:OMEGA (e.g. 0.3:0.8)") from None
    if not 0 <= beta < omega <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= BETA < OMEGA <= 1")
    return beta, omega


def clipped_counts(u: torch.Tensor, moving: torch.Tensor, rates: tuple[float, float]) -> torch.Tensor:
    """k = floor((beta + (omega - beta) u) n) + 1 for u in [0, 1) and n >= 0 moving positions (1 where
    n = 0: a block of context only, which contributes nothing)."""
    beta, omega = rates
    k = ((beta + (omega - beta) * u) * moving).floor().long() + 1
    return torch.minimum(k, moving.clamp(min=1))  # beta + (omega - beta) u can round up to 1


def count_law(n: int, rates: tuple[float, float]) -> list[float]:
    """P(k) for k = 1..n under `clipped_counts`, in closed form (the module doc)."""
    beta, omega = rates
    return [max(0.0, min(omega, k / n) - max(beta, (k - 1) / n)) / (omega - beta) for k in range(1, n + 1)]


def least_variance(estimates: dict[tuple[float, float], torch.Tensor]) -> tuple[float, float]:
    """The interval whose estimates (one per record) have the smallest variance; the first on a tie."""
    return min(estimates, key=lambda rates: float(estimates[rates].double().var()))
