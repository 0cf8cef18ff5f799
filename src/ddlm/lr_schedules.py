"""Learning-rate schedules: the factor of the peak rate `--lr` at each optimiser step.

A schedule sees the run's horizon, the number of steps it will take: `--steps N`, or, for a
`--time-budget` run, the steps its budget buys at the speed measured over its first steps (see
`Trainer.fit`; saved in the checkpoints, so a resumed run keeps it). Before the horizon is known
the rate warms up as the constant schedule does.

Both schedules warm up over `warmup_steps(warmup, horizon)`: `--warmup` steps, but never more than a
tenth of the horizon, so a short run (a five-minute first run takes a few hundred steps on a laptop)
spends most of its steps at the peak rate rather than warming up.
"""

from __future__ import annotations

import math

from .registry import Registry


def warmup_steps(warmup: int, horizon: int | None) -> int:
    """min(warmup, horizon // 10), at least 1; `warmup` while the horizon is unknown."""
    return max(1, warmup if horizon is None else min(warmup, horizon // 10))


class LRSchedule:
    name: str

    def factor(self, step: int, warmup: int, horizon: int | None) -> float:
        """lr(step) / peak lr, for the 0-based `step`."""
        raise NotImplementedError


LR_SCHEDULES: Registry[type[LRSchedule]] = Registry("learning-rate schedule")


@LR_SCHEDULES.register
class Constant(LRSchedule):
    """Linear warm-up over `warmup_steps` steps, then the peak rate to the end."""

    name = "constant"

    def factor(self, step, warmup, horizon):
        return min(1.0, (step + 1) / warmup_steps(warmup, horizon))


@LR_SCHEDULES.register
class Cosine(LRSchedule):
    """Warm-up over w = `warmup_steps` steps, then a cosine
    from the peak down to `floor` of it at the horizon, and the floor after it:

        f(s) = floor + (1 - floor) (1 + cos(pi (s - w) / (H - w))) / 2.
    """

    name = "cosine"
    floor = 0.1

    def factor(self, step, warmup, horizon):
        if horizon is None:
            return Constant().factor(step, warmup, None)
        warm = warmup_steps(warmup, horizon)
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(horizon - warm, 1))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
