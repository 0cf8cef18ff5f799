"""Reward-guided particles: sequential Monte Carlo / Feynman-Kac steering of a masked diffusion sampler
(Singhal et al. 2025, "A general framework for inference-time scaling and steering of diffusion models").

Target: p_lambda(x) = p(x) exp(r(x) / lambda) / Z, p the sampler's law, r a black-box reward, lambda > 0
the reward temperature. Each sample runs K particles through the reverse process (the same step rule,
order and cache as plain sampling). Before each step, at time t, every particle has the network's output
for its state x_t, hence a denoised estimate x0_hat(x_t): the argmax of the clean-token prediction at
each masked position, the token itself elsewhere (a finished particle is its own estimate). The
particle's log weight grows by

    (r(x0_hat(x_t)) - r(x0_hat(x_t'))) / lambda,        t' the time of its previous estimate,

so over the whole run the increments telescope to (r(x0) - r(x0_hat(x_1))) / lambda: the first
estimate is one per sample (all particles start from the same all-masked state), so the final weights
are exp(r(x0) / lambda) up to a constant, and the weighted particles target p_lambda as K grows.
The intermediate increments only steer *which* particles are kept: when a sample's effective sample
size (sum w)^2 / sum w^2 falls below K / 2 its particles are resampled (systematic by default) and
their weights reset. At the end one particle per sample is drawn from its final weights (or, with
`pick_best`, the one with the highest reward: with no resampling that is best-of-K).

K = 1 is plain sampling. Rewards are evaluated only for particles whose estimate changed, once per
distinct estimate. `nfe` counts, per sample, the network evaluations of all its K particles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..objectives.base import DiffusionObjective
from ..sampling import CachedScores, SampleResult, draw, ordered_step, reverse_times, step_probs
from .remask import Remasking
from .resampling import Scheme, Systematic, Trigger, WhenESSLow

RewardOfIds = Callable[[torch.Tensor], torch.Tensor]  # ids [n, L] -> [n] float64


@dataclass
class Steering:
    """K particles per sample, steered by `reward` (ids -> values) at temperature lambda; `remask`
    lets committed tokens return to the mask (ReMDM) so particles can repair early choices."""

    reward: RewardOfIds | None = None
    particles: int = 1
    temperature: float = 1.0
    trigger: Trigger = field(default_factory=WhenESSLow)
    scheme: Scheme = field(default_factory=Systematic)
    pick_best: bool = False
    remask: Remasking | None = None

    MAX_PARTICLES = 4096  # a sample's particles share one network batch, so memory grows with K

    def __post_init__(self):
        K, lam = self.particles, self.temperature
        if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= self.MAX_PARTICLES:
            raise UserError(f"--particles {K}: give a whole number K from 1 (plain sampling) to {self.MAX_PARTICLES}")
        if isinstance(lam, bool) or not (isinstance(lam, int | float) and 1e-6 <= lam <= 1e6):  # nan fails too
            raise UserError(f"--reward-temperature {lam}: give a number LAMBDA from 1e-6 to 1e6")
        if self.reward is None and (K > 1 or self.pick_best):
            raise UserError("--particles and --pick need --reward: particles are weighted by a reward")
        eta = None if self.remask is None else self.remask.eta
        if eta is not None and (isinstance(eta, bool) or not (isinstance(eta, int | float) and 0.0 <= eta <= 100.0)):
            raise UserError(f"--remask-rate {eta}: give a number in [0, 100]")

    def refusal(self, objective, spec) -> str | None:
        """Why these particles cannot steer `objective` sampled as `spec`, or None."""
        if not getattr(objective, "masked", False):
            return (
                f"--reward, --particles and --remask-rate steer a masked diffusion (sedd, mdlm or d3pm on the "
                f"absorbing process); this run is {objective.name} on the {objective.process.name} process"
            )
        if type(objective).sample is not DiffusionObjective.sample:
            return f"--reward and --particles: a {objective.name} run samples block by block; steer an mdlm or sedd run"
        if spec.semi_ar_length:
            return "--semi-ar: particles are weighted by the reward of whole samples; not with --semi-ar"
        if self.remask is not None and spec.order is not None:
            return "--remask-rate remasks under the sampler's random unmasking; with --order use --remask (RDM)"
        return None

    def samples_per_batch(self, batch_size: int) -> int:
        """Samples per batch, so that a batch holds at most `batch_size` particles (at least one sample)."""
        return max(1, batch_size // self.particles)

    def sample(
        self, net, batch, length, spec, *, objective, clamp=None, clamp_values=None, generator=None, device="cpu"
    ) -> SampleResult:
        return generate_steered(
            net,
            objective,
            batch,
            length,
            spec,
            self,
            clamp=clamp,
            clamp_values=clamp_values,
            generator=generator,
            device=device,
        )


class Swarm:
    """The particles' weights, rewards and current estimates: rows b K .. b K + K - 1 are sample b's."""

    def __init__(self, steering: Steering, batch: int):
        self.steering, self.batch, self.K = steering, batch, steering.particles
        self.log_w = None  # [B, K]
        self.reward = None  # [B K] r(x0_hat) of each particle's latest estimate
        self.estimate = None  # [B K, L]

    def weigh(self, estimate: torch.Tensor) -> None:
        """Multiply each particle's weight by exp((r(estimate) - r(previous estimate)) / lambda)."""
        if self.steering.reward is None:
            return
        if self.estimate is None:
            changed = torch.ones(len(estimate), dtype=torch.bool, device=estimate.device)
            reward = torch.zeros(len(estimate), dtype=torch.float64, device=estimate.device)
        else:
            changed, reward = (estimate != self.estimate).any(-1), self.reward.clone()
        if changed.any():
            distinct, which = torch.unique(estimate[changed], dim=0, return_inverse=True)
            reward[changed] = self.steering.reward(distinct).to(reward)[which]
        if self.log_w is None:
            self.log_w = torch.zeros(self.batch, self.K, dtype=torch.float64, device=estimate.device)
        else:
            self.log_w += ((reward - self.reward) / self.steering.temperature).view(self.batch, self.K)
            self.log_w -= self.log_w.max(-1, keepdim=True).values  # the same weights, kept from overflowing
        self.reward, self.estimate = reward, estimate

    def resample(self, generator) -> torch.Tensor | None:
        """[B K] the rows each particle now copies (ancestors within its own sample), or None when no
        sample is due; the resampled samples' weights reset to equal."""
        if self.log_w is None or self.K == 1:
            return None
        due = self.steering.trigger.due(self.log_w)
        if not due.any():
            return None
        base = torch.arange(self.batch * self.K, device=self.log_w.device).view(self.batch, self.K)
        ancestors = self.steering.scheme.ancestors(self.log_w[due], generator)
        base[due] = ancestors + (due.nonzero() * self.K)
        self.log_w[due] = 0.0
        rows = base.flatten()
        self.reward, self.estimate = self.reward[rows], self.estimate[rows]
        return rows

    def pick(self, generator) -> torch.Tensor:
        """[B] the row returned for each sample: drawn from the final weights, or the best reward."""
        offset = torch.arange(self.batch, device=self.reward.device) * self.K
        if self.steering.pick_best:
            return offset + self.reward.view(self.batch, self.K).argmax(-1)
        w = torch.softmax(self.log_w, dim=-1)
        return offset + torch.multinomial(w, 1, generator=generator).squeeze(-1)


def denoised_estimate(objective, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x0_hat: at each masked position the token with the largest score (the argmax of the clean-token
    prediction, which the scores are proportional to), elsewhere the current token."""
    return torch.where(x == objective.process.mask_id, s.argmax(-1), x)


@torch.inference_mode()
def generate_steered(
    net,
    objective,
    batch: int,
    length: int,
    spec,
    steering: Steering,
    *,
    clamp=None,
    clamp_values=None,
    generator=None,
    device="cpu",
) -> SampleResult:
    """`batch` samples, each the pick of K particles steered by the reward (see the module doc)."""
    K, process = steering.particles, objective.process
    x = process.prior_sample((batch * K, length), generator, device)
    if clamp is not None:  # every particle of a sample holds its sample's template
        clamp, clamp_values = clamp.repeat_interleave(K, 0), clamp_values.repeat_interleave(K, 0)
        x = torch.where(clamp, clamp_values, x)
    free = torch.ones_like(x, dtype=torch.bool) if clamp is None else ~clamp
    times = reverse_times(objective.schedule, spec.steps)
    scores = CachedScores(net, objective, x.shape, spec, spec.use_cache and not net.time_conditioned, device)
    swarm, cost = Swarm(steering, batch), torch.zeros(batch, dtype=torch.long, device=device)
    committed = torch.full(x.shape, torch.inf, device=device) if spec.order and spec.order.remask else None
    for i in range(spec.steps):
        active = ~process.finished(x)
        if not active.any():
            break
        paid = scores.nfe.clone()
        s = scores(x, times[i], active)
        cost += (scores.nfe - paid).view(batch, K).sum(-1)
        swarm.weigh(denoised_estimate(objective, x, s))
        rows = swarm.resample(generator)
        if rows is not None:  # a sample's particles share its template, so clamp and free need no reindexing
            x, s, active = x[rows], s[rows], active[rows]
            committed = None if committed is None else committed[rows]
            scores.select(rows)
        new, committed = reverse_step(
            objective, spec, steering, x, s, times[i], times[i + 1], free, committed, generator
        )
        if clamp is not None:
            new = torch.where(clamp, clamp_values, new)
        new = torch.where(active[:, None], new, x)
        scores.forget((new != x).any(-1))
        x = new
    swarm.weigh(x)  # finished: every particle is its own estimate
    chosen = swarm.pick(generator) if steering.reward is not None else torch.arange(batch, device=x.device) * K
    return SampleResult(tokens=x[chosen], nfe=cost)


def reverse_step(objective, spec, steering: Steering, x, s, t: float, t_next: float, free, committed, generator):
    """(next state, committed scores): the plain sampler's step (ordered, or drawn from the step rule),
    with ReMDM's remasking when asked."""
    if spec.order is not None:
        return ordered_step(objective, spec.order, x, s, t_next, free, committed, generator)
    probs = step_probs(objective, spec.rule, x, s, t, t_next)
    if steering.remask is not None:
        probs = steering.remask.probs(objective.schedule, probs, x, free, objective.process.mask_id, t, t_next)
    return draw(probs, generator), committed
