"""D3PM: discrete-time diffusion with an x0-parameterisation and a hybrid loss (Austin et al. 2021)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..processes import Process
from ..schedules import Schedule
from .base import OBJECTIVES, DiffusionObjective, Objective, log_expm1
from .option import Option


@OBJECTIVES.register
class D3PM(DiffusionObjective):
    """D3PM (Austin et al.): discrete time, T steps, x0-parameterisation, loss L_vb + lambda * CE.

    Step k of T sits at total noise sbar_k = sbar(k / T) (sbar_0 = 0), so the one-step kernel is
    exp((sbar_k - sbar_{k-1}) Q), and absorbing with the eps = 0 log-linear schedule is Austin's
    1 / (T - k + 1) masking schedule. With x0-prediction p~(x0 | x_k):
        p_theta(x_{k-1} = a | x_k = b)  proportional to  sum_c q(x_{k-1} = a, x_k = b | x0 = c) p~(c)
                                      = P_step[b, a] * [exp(sbar_{k-1} Q) p~]_a
        L_vb = sum_{k=2}^T KL(q(x_{k-1} | x_k, x0) || p_theta(x_{k-1} | x_k)) - log p_theta(x0 | x_1)
               + KL(q(x_T | x0) || prior),
    estimated with one stratified k per sequence and weight T. The auxiliary -log p~(x0_i | x_k) at
    corrupted positions is added in training only (`training_loss`); `loss` is the bound.
    """

    name = "d3pm"
    continuous_time = False
    options = (
        Option("steps", "--diffusion-steps", int, 1000, "number of discrete steps", 1, 10**7, metavar="T"),
        Option("hybrid_lambda", "--hybrid-lambda", float, 0.01, "weight of the auxiliary cross-entropy", 0, 1e6),
    )
    # the bound is estimated in its own discrete time, under the run's schedule
    for_evaluation = Objective.for_evaluation
    bound_at = Objective.bound_at

    @classmethod
    def schedule_config(cls, process, name=None):
        schedule = super().schedule_config(process, name)
        if process == "absorbing" and schedule["name"] == "loglinear":
            schedule = {"name": "loglinear", "eps": 0.0}  # all masked at step T: no prior term is lost
        return schedule

    def __init__(self, process: Process, schedule: Schedule, steps: int = 1000, hybrid_lambda: float = 0.01):
        super().__init__(process, schedule)
        self.steps, self.hybrid_lambda = steps, hybrid_lambda

    def sbar_at(self, k: torch.Tensor) -> torch.Tensor:
        return torch.where(k > 0, self.schedule.total(k.double() / self.steps), 0.0)

    def log_score(self, out, xt, sbar):
        p0 = F.softmax(self.on_support(out), dim=-1)
        if self.masked:
            return torch.log(p0) - log_expm1(sbar)
        # s_y = E_{c ~ p~}[ P(y | c) / P(x_t | c) ]: the concrete score implied by the x0-prediction
        row = self.process.transition_row(xt, sbar)
        weights = torch.where(row > 0, p0 / row, 0.0)  # c with P(x_t | c) = 0 (a context token) has p~(c) = 0
        return torch.log(self.process.transition_apply(weights, sbar).clamp(min=1e-30))

    def posterior(self, xk: torch.Tensor, x0_probs: torch.Tensor, sbar_k, sbar_prev) -> torch.Tensor:
        """sum_c q(x_{k-1} = a | x_k, x0 = c) w(c), normalised over a, for a distribution w over x0 (last dim S):
        proportional to P_step[x_k, a] * [exp(sbar_{k-1} Q) w]_a. A one-hot w gives the true posterior."""
        step = self.process.transition_row(xk, sbar_k - sbar_prev)
        joint = step * self.process.transition_apply(x0_probs, sbar_prev)
        return joint / joint.sum(-1, keepdim=True)

    def _terms(self, net, x0, k, generator):
        """Per-sequence L_vb estimate and auxiliary CE, both [B]; context positions score nothing."""
        S, V = self.process.num_states, self.vocab_size
        sbar_k, sbar_prev = self.sbar_at(k).float(), self.sbar_at(k - 1).float()
        xk = self.process.perturb(x0, sbar_k[:, None], generator)
        out = self.on_support(net(xk, sbar_k).float())
        p0 = F.pad(F.softmax(out, dim=-1), (0, S - V))  # no mass on the mask as a clean token
        moving = self.process.moves(x0)
        x0, xk = torch.where(moving, x0, 0), torch.where(moving, xk, 0)  # a moving token stands in for context
        sk, sp = sbar_k[:, None, None], sbar_prev[:, None, None]
        model = self.posterior(xk, p0, sk, sp)
        truth = self.posterior(xk, F.one_hot(x0, S).float(), sk, sp)
        log_model = torch.log(model.clamp(min=1e-30))
        kl = torch.where(truth > 0, truth * (torch.log(truth.clamp(min=1e-30)) - log_model), 0.0).sum(-1)
        nll_first = -log_model.gather(-1, x0[..., None]).squeeze(-1)  # k = 1: -log p_theta(x0 | x_1)
        per_pos = torch.where((k == 1)[:, None] & moving, nll_first, torch.where(moving, kl, 0.0))
        corrupted = (xk != x0 if not self.masked else xk == self.process.mask_id) & moving
        ce = torch.where(corrupted, F.cross_entropy(out.transpose(1, 2), x0, reduction="none"), 0.0)
        return self.steps * per_pos.sum(-1) + self.prior_kl(x0, moving), ce.sum(-1)

    def prior_kl(self, x0: torch.Tensor, moving: torch.Tensor | None = None) -> torch.Tensor:
        """[B] KL(q(x_T | x0) || prior) summed over the moving positions: 0 for absorbing when sbar(1) is
        infinite, exact otherwise (the uniform prior is uniform over the R moving tokens)."""
        sbar_T = self.schedule.total(torch.tensor(1.0, dtype=torch.float64))
        if not torch.isfinite(sbar_T):
            return torch.zeros(x0.shape[0], device=x0.device)
        if self.masked:
            return torch.full((x0.shape[0],), math.inf, device=x0.device)  # mass left off the all-mask prior
        q = self.process.transition_row(x0, sbar_T.float())  # symmetric kernel: row = column
        kl = torch.where(q > 0, q * torch.log(q * self.process.support), 0.0).sum(-1)
        return kl.sum(-1) if moving is None else torch.where(moving, kl, 0.0).sum(-1)

    def _times(self, B, generator, device):
        u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)
        return ((torch.arange(B, device=device) + u) / B * self.steps).floor().long() + 1  # stratified in 1..T

    def loss(self, net, x0, t=None, generator=None, t_min=1e-3):
        k = self._times(x0.shape[0], generator, x0.device) if t is None else (t * self.steps).ceil().long().clamp(1)
        return self._terms(net, x0, k, generator)[0]

    def training_loss(self, net, x0, generator=None):
        vb, ce = self._terms(net, x0, self._times(x0.shape[0], generator, x0.device), generator)
        return vb + self.hybrid_lambda * ce
