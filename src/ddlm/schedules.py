"""Noise schedules: the total noise sbar(t) and its rate sigma(t) = d sbar / dt, t in [0, 1].

The forward process at time t is exp(sbar(t) Q), so a schedule is all a sampler or an
objective needs to know about time. Schedules are tiny objects with one interface,
chosen by name through `SCHEDULES`.
"""

from __future__ import annotations

import math

import torch

from .registry import Registry


class Schedule:
    """sbar(t) (total noise) and sigma(t) (its derivative)."""

    name: str

    def total(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


@SCHEDULES.register
class LogLinear(Schedule):
    """sbar(t) = -log(1 - (1 - eps) t): the masking probability 1 - exp(-sbar) = (1 - eps) t is linear in t.

    eps keeps sbar(1) = -log(eps) finite; eps = 0 gives the exact MDLM schedule (all masked at t = 1).
    """

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def config(self) -> dict:
        return {"name": self.name, "eps": self.eps}


@SCHEDULES.register
class Geometric(Schedule):
    """sbar(t) = smin^(1-t) smax^t, sigma(t) = sbar(t) log(smax / smin) (SEDD's schedule for the uniform process)."""

    name = "geometric"

    def __init__(self, smin: float = 1e-4, smax: float = 20.0):
        self.smin, self.smax = smin, smax

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return self.smin ** (1 - t) * self.smax**t

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return self.total(t) * math.log(self.smax / self.smin)

    def config(self) -> dict:
        return {"name": self.name, "smin": self.smin, "smax": self.smax}


def schedule_from_config(cfg: dict) -> Schedule:
    cfg = dict(cfg)
    return SCHEDULES[cfg.pop("name")](**cfg)
