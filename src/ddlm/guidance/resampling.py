"""When and how a set of K weighted particles is resampled (sequential Monte Carlo).

Weights are kept as log weights [B, K], one row per sample. The normalised weights are
w_k = exp(l_k) / sum_j exp(l_j), and the effective sample size is ESS = (sum w)^2 / sum w^2 = 1 / sum w^2,
between 1 (one particle holds all the weight) and K (equal weights).

A *trigger* says which rows resample at a step; a *scheme* draws K ancestor indices per row with
E[number of copies of particle k] = K w_k, after which the row's weights are equal again.
"""

from __future__ import annotations

import torch

from ..registry import Registry


def normalised(log_w: torch.Tensor) -> torch.Tensor:
    """[B, K] w_k = softmax(log_w) per row."""
    return torch.softmax(log_w.double(), dim=-1)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """[B] ESS = (sum w)^2 / sum w^2."""
    w = normalised(log_w)
    return 1.0 / (w * w).sum(-1)


class Trigger:
    name: str

    def due(self, log_w: torch.Tensor) -> torch.Tensor:
        """[B] bool: the rows to resample now."""
        raise NotImplementedError


TRIGGERS: Registry[type[Trigger]] = Registry("resampling trigger")


@TRIGGERS.register
class WhenESSLow(Trigger):
    """Resample a row when its ESS falls below K / 2 (the usual adaptive rule)."""

    name = "ess"

    def due(self, log_w):
        return effective_sample_size(log_w) < log_w.shape[-1] / 2


@TRIGGERS.register
class Never(Trigger):
    """Never resample: K independent runs weighted at the end (best-of-K with the final pick `best`)."""

    name = "never"

    def due(self, log_w):
        return torch.zeros(log_w.shape[0], dtype=torch.bool, device=log_w.device)


@TRIGGERS.register
class Always(Trigger):
    """Resample every row at every step."""

    name = "always"

    def due(self, log_w):
        return torch.ones(log_w.shape[0], dtype=torch.bool, device=log_w.device)


class Scheme:
    name: str

    def ancestors(self, log_w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B, K] long: the particle each new particle copies."""
        raise NotImplementedError


SCHEMES: Registry[type[Scheme]] = Registry("resampling scheme")


@SCHEMES.register
class Systematic(Scheme):
    """One uniform u per row, the K points (k + u) / K read off the cumulative weights: each particle
    gets floor(K w_k) or ceil(K w_k) copies, the lowest-variance of the usual schemes."""

    name = "systematic"

    def ancestors(self, log_w, generator):
        B, K = log_w.shape
        cdf = normalised(log_w).cumsum(-1)
        u = torch.rand(B, 1, generator=generator, device=log_w.device, dtype=torch.float64)
        points = (torch.arange(K, device=log_w.device, dtype=torch.float64) + u) / K
        return torch.searchsorted(cdf, points * cdf[:, -1:], right=True).clamp(max=K - 1)


@SCHEMES.register
class Multinomial(Scheme):
    """K independent draws from the weights."""

    name = "multinomial"

    def ancestors(self, log_w, generator):
        return torch.multinomial(normalised(log_w), log_w.shape[-1], replacement=True, generator=generator)
