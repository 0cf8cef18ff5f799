"""Learning-rate schedules: the factor of the peak rate `--lr` at each optimiser step.

A schedule sees the run's horizon, the number of steps it will take: `--steps N`, or, for a
`--time-budget` run, the steps its budget buys at the speed measured over its first steps (see
`Trainer.fit`; saved in the checkpoints, so a resumed run keeps it). Before the horizon is known
the rate warms up as the constant schedule does.
"""

from __future__ import annotations

import math

from .registry import Registry


class LRSchedule:
    name: str

    def factor(self, step: int, warmup: int, horizon: int | None) -> float:
        """lr(step) / peak lr, for the 0-based `step`."""
        raise NotImplementedError


LR_SCHEDULES: Registry[type[LRSchedule]] = Registry("learning-rate schedule")


@LR_SCHEDULES.register
class Constant(LRSchedule):
    """Linear warm-up over `warmup` steps, then the peak rate to the end."""

    name = "constant"

    def factor(self, step, warmup, horizon):
        return min(1.0, (step + 1) / max(warmup, 1))


@LR_SCHEDULES.register
class Cosine(LRSchedule):
    """Warm-up over min(warmup, horizon / 20) steps (a short run is not spent warming up), then a cosine
    from the peak down to `floor` of it at the horizon, and the floor after it:

        f(s) = floor + (1 - floor) (1 + cos(pi (s - w) / (H - w))) / 2.
    """

    name = "cosine"
    floor = 0.1

    def factor(self, step, warmup, horizon):
        if horizon is None:
            return Constant().factor(step, warmup, None)
        warm = max(1, min(warmup, horizon // 20))
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(horizon - warm, 1))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
