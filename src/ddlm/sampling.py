"""Reverse-process samplers for the diffusion objectives.

`generate` runs the reverse process from t = 1 to t_end and then denoises once more, so a finished
absorbing sample never contains the mask. Each step asks the step rule (`TauLeaping`, `Euler`) for
per-position transition probabilities and draws the next state with one uniform number per
position, so every variant consumes the random stream identically.

Caching (MDLM): if the network ignores time and a sequence did not change in a step, its network
output is still exact, so it is reused. This is tracked per sequence: only the sequences that
changed are re-evaluated, and `nfe` counts evaluations per sequence. For the absorbing process each
change unmasks at least one position, so a sequence of L positions costs at most L + 1 evaluations
whatever the number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objectives import DiffusionObjective
from .processes import Absorbing, Process
from .schedules import Schedule


class StepRule:
    """Per-position transition probabilities over all states for one reverse step t -> t_next."""

    name: str

    def probs(self, process: Process, schedule: Schedule, xt, s, t: float, t_next: float) -> torch.Tensor:
        raise NotImplementedError


class TauLeaping(StepRule):
    """Tweedie tau-leaping: exact per-position reverse step given the score (SEDD Alg. 2)."""

    name = "tau-leaping"

    def probs(self, process, schedule, xt, s, t, t_next):
        d = schedule.total(torch.tensor(t, dtype=torch.float64)) - schedule.total(
            torch.tensor(t_next, dtype=torch.float64)
        )
        return process.tweedie_probs(xt, s, d.to(s.dtype))


class Euler(StepRule):
    """First-order step: P(y) = [y = x_t] + dt sigma(t) R(x_t -> y), with the stay mass clipped at 0."""

    name = "euler"

    def probs(self, process, schedule, xt, s, t, t_next):
        sigma = schedule.rate(torch.tensor(t, dtype=torch.float64)).item()
        move = process.reverse_rates(xt, s) * (sigma * (t - t_next))
        move = move.scatter(-1, xt[..., None], 0.0)
        total = move.sum(-1, keepdim=True)
        # If the moves exceed probability 1 (large steps), rescale them so the row stays a distribution.
        move = move / total.clamp(min=1.0)
        stay = (1 - move.sum(-1, keepdim=True)).clamp(min=0)
        return move.scatter_add(-1, xt[..., None], stay)


STEP_RULES: dict[str, type[StepRule]] = {"tau-leaping": TauLeaping, "euler": Euler}


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row of unnormalised `probs` [..., S] by inverse CDF with one uniform each."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[:-1], generator=generator, device=probs.device, dtype=torch.float64)
    idx = (cdf < (u * cdf[..., -1])[..., None]).sum(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [B, L]
    nfe: torch.Tensor  # [B] network evaluations each sequence received
    history: list[torch.Tensor] | None = None  # states after each step, when asked for


@torch.inference_mode()
def generate(
    net,
    objective: DiffusionObjective,
    rule: StepRule,
    batch: int,
    length: int,
    steps: int,
    *,
    clamp: torch.Tensor | None = None,
    clamp_values: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    t_end: float = 1e-5,
    device: torch.device | str = "cpu",
    keep_history: bool = False,
    progress=None,
) -> SampleResult:
    """Sample `batch` sequences of `length` tokens.

    Positions where `clamp` is True are held at `clamp_values`. `allowed` ([V] bool) restricts what a
    position may become (e.g. residues only when infilling a protein): the scores of other tokens are
    set to zero, which conditions the reverse process on never choosing them.
    """
    process, schedule = objective.process, objective.schedule
    x = process.prior_sample((batch, length), generator, device)
    if clamp is not None:
        x = torch.where(clamp, clamp_values, x)
    cache_ok = use_cache and not net.time_conditioned
    out = torch.zeros(batch, length, objective.vocab_size, device=device)
    fresh = torch.zeros(batch, dtype=torch.bool, device=device)  # out[b] is valid for the current x[b]
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    history = [x.clone()] if keep_history else None
    times = torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64).tolist()

    def evaluate(t: float, active: torch.Tensor) -> torch.Tensor:
        sbar = schedule.total(torch.tensor(t, dtype=torch.float64)).float()
        need = active & ~fresh if cache_ok else active
        if need.any():
            idx = need.nonzero().squeeze(-1)
            out[idx] = net(x[idx], sbar.expand(len(idx)).to(device)).float()
            nfe[idx] += 1
            fresh[idx] = True
        s = objective.log_score(out, x, sbar.to(device)).exp()
        return s if allowed is None else s * allowed.to(s)

    for i in range(steps + 1):
        active = ~process.finished(x)
        if not active.any():
            break
        final = i == steps
        t = times[i]
        t_next = 0.0 if final else times[i + 1]
        s = evaluate(t, active)
        probs = rule.probs(process, schedule, x, s, t, t_next) if not final else final_probs(process, schedule, x, s, t)
        new = draw(probs, generator)
        if clamp is not None:
            new = torch.where(clamp, clamp_values, new)
        new = torch.where(active[:, None], new, x)
        fresh &= ~(new != x).any(-1)
        x = new
        if keep_history:
            history.append(x.clone())
        if progress is not None:
            progress.update(1)
    return SampleResult(tokens=x, nfe=nfe, history=history)


def final_probs(process: Process, schedule: Schedule, xt, s, t_end: float) -> torch.Tensor:
    """Last step from t_end to 0: a Tweedie step; for the absorbing process the mask is not an option,
    so a masked position draws y with probability proportional to s_y."""
    probs = TauLeaping().probs(process, schedule, xt, s, t_end, 0.0)
    if isinstance(process, Absorbing):
        masked = (xt == process.mask_id)[..., None]
        real = torch.cat([s, torch.zeros_like(s[..., :1])], dim=-1)
        probs = torch.where(masked, real, probs)
    return probs
