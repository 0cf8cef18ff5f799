"""SEDD: score entropy, absorbing or uniform (Lou et al. 2024)."""

from __future__ import annotations

import math

import torch

from .base import OBJECTIVES, DiffusionObjective, log_expm1
from .estimators import ESTIMATOR_OPTIONS, estimator_refusal


@OBJECTIVES.register
class ScoreEntropy(DiffusionObjective):
    """SEDD's denoising score entropy with the constant K(a) = a (log a - 1), so the loss is the NELBO.

    For x_t and each neighbour y one position away, with rho_y = p_t(y | x0) / p_t(x_t | x0):
        l_i = sigma(t) * sum_{y != x_t,i} Q[x_t,i, y] * [ s_y - rho_y log s_y + K(rho_y) ]
    Absorbing (Q = 1 from every token into the mask, r = 1 / expm1(sbar) at a masked position):
        l_i = sigma(t) * [ sum_{y<V} s_y - r log s_{x0_i} + r (log r - 1) ],  0 at unmasked positions.
    Parameterisation (absorbing): log s_y = o_y - log expm1(sbar) - log R (R = the moving tokens, V for
    a fixed window), which makes the optimum o_y = log(R p(x0_i = y | x_t)) independent of t and a zero
    output the uniform guess. The ratio of the current token to itself is 1.
    With support R < V (a record's markers are context), Q is the process's on the moving tokens and
    the sum over neighbours y runs over them; context positions are never noised and score nothing.
    """

    name = "sedd"
    options = ESTIMATOR_OPTIONS

    @classmethod
    def refuse(cls, config):
        return estimator_refusal(config.objective_options, masked=config.process == "absorbing")

    @property
    def time_separable(self) -> bool:
        return self.masked

    def log_score(self, out, xt, sbar):
        if self.masked:
            return self.on_support(out) - log_expm1(sbar) - math.log(self.process.support)
        # Uniform: the network's output is the log score, with the current token's entry fixed at 0.
        return self.on_support(out.scatter(-1, xt[..., None], 0.0))

    def mix_guided(self, conditional, unconditional, gamma):
        """Absorbing: the scores at a masked position are s_y = p(y | x_t) / expm1(sbar) up to the network's
        total rate, so guidance mixes the normalised predictions, p_gamma ∝ p(y | x_t, label)^gamma
        p(y | x_t, null)^(1 - gamma), and returns the output whose scores are p_gamma(y) / expm1(sbar):
        o_y = log p_gamma(y) + log R. The total unmasking rate is the schedule's, not the mixture's.
        Uniform: the log rates mix (the base rule)."""
        mixed = super().mix_guided(conditional, unconditional, gamma)
        if not self.masked:
            return mixed
        return torch.log_softmax(self.on_support(mixed), dim=-1) + math.log(self.process.support)

    def position_loss(self, out, xt, x0, sbar, sigma):
        log_s = self.log_score(out, xt, sbar[..., None])
        if self.masked:
            masked = xt == self.process.mask_id
            r = 1.0 / torch.expm1(sbar)
            positive = torch.logsumexp(log_s, dim=-1).exp()
            negative = r * log_s.gather(-1, x0[..., None]).squeeze(-1)
            constant = r * (torch.log(r) - 1)
            return torch.where(masked, sigma * (positive - negative + constant), 0.0)
        return self._uniform_position_loss(log_s, xt, x0, sbar, sigma)

    def _uniform_position_loss(self, log_s, xt, x0, sbar, sigma):
        V, R = self.vocab_size, self.process.support
        a = -torch.expm1(-sbar) / R  # p_t(y | x0) for y != x0
        b = torch.exp(-sbar) + a  # p_t(x0 | x0)
        same = (xt == x0)[..., None]
        rho = torch.where(same, (a / b)[..., None], torch.ones_like(log_s))
        rho = torch.where(~same & (torch.arange(V, device=xt.device) == x0[..., None]), (b / a)[..., None], rho)
        terms = log_s.exp() - rho * log_s + rho * (torch.log(rho) - 1)
        # y ranges over the moving neighbours y != x_t
        neighbour = self.process.support_mask(terms).bool() & (torch.arange(V, device=xt.device) != xt[..., None])
        per_position = sigma * torch.where(neighbour, terms, 0.0).sum(-1) / R
        return torch.where(self.process.moves(x0), per_position, 0.0)
