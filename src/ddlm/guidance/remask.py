"""Remasking for the absorbing process (after ReMDM, Wang et al. 2025), at a rate tied to the schedule.

A masked diffusion commits a token for good. ReMDM's reverse step from t to s < t, with
alpha = exp(-sbar) the probability of being unmasked and x0 the clean token, lets a committed token
return to the mask with probability sigma_t, and unmasks a masked position more often to make up:

    committed position:  P(mask) = sigma_t,  P(stay) = 1 - sigma_t
    masked position:     P(unmask to y) = (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t) p(x0 = y | x_t)

For every sigma_t in [0, min(1, (1 - alpha_s) / alpha_t)] this is the posterior of a forward process
with the same marginals q(x_t | x0) as the masking one, so with exact conditionals the state at each
time still has the law of the data noised to that time (ReMDM). Relative to the plain
Tweedie step, whose unmasking probability is (alpha_s - alpha_t) / (1 - alpha_t), each masked
position's move probabilities are multiplied by c = 1 + sigma_t alpha_t / (alpha_s - alpha_t).

sigma_t is chosen as a *rate*, sigma_t = min(eta (alpha_s - alpha_t), 1 - alpha_s) / alpha_t: about
eta tokens return to the mask for each token the plain schedule unmasks (alpha_t L committed tokens,
each remasked with probability sigma_t), and as the steps shrink so does sigma_t, so the sampler
tends to a continuous-time process with the exact marginals. (ReMDM's own schedules take sigma_t a
fixed fraction of its maximum at every step; measured on the toy of tests/toy.py, that leaves an error
that more steps do not remove.) The last step (s = 0, alpha_s = 1) never remasks, so a finished sample
holds no mask.
"""

from __future__ import annotations

import torch

from ..schedules import Schedule


class Remasking:
    """ReMDM's remasking at `eta` remasked tokens per token unmasked by the schedule (0: none)."""

    def __init__(self, eta: float):
        self.eta = eta

    def alphas(self, schedule: Schedule, t: float, t_next: float) -> tuple[float, float]:
        """(alpha_t, alpha_s): the probabilities of a position being unmasked at t and at s = t_next."""
        sbar = schedule.total(torch.tensor([t, t_next], dtype=torch.float64))
        alpha = torch.exp(-sbar)
        return alpha[0].item(), alpha[1].item()

    def sigma(self, alpha_t: float, alpha_s: float) -> float:
        """sigma_t = min(eta (alpha_s - alpha_t), 1 - alpha_s) / alpha_t, at most 1 (0 when alpha_t = 0:
        nothing is committed yet)."""
        if alpha_t <= 0.0:
            return 0.0
        return min(1.0, min(self.eta * (alpha_s - alpha_t), 1.0 - alpha_s) / alpha_t)

    def probs(
        self,
        schedule: Schedule,
        probs: torch.Tensor,
        x: torch.Tensor,
        free: torch.Tensor,
        mask_id: int,
        t: float,
        t_next: float,
    ) -> torch.Tensor:
        """The plain step's probabilities [B, L, V + 1] turned into ReMDM's: masked positions' moves scaled
        by c (the total clipped at 1, the mask taking the rest), committed free positions remasked with
        probability sigma_t."""
        alpha_t, alpha_s = self.alphas(schedule, t, t_next)
        sigma = self.sigma(alpha_t, alpha_s)
        if sigma <= 0.0 or alpha_s <= alpha_t:
            return probs
        c = 1.0 + sigma * alpha_t / (alpha_s - alpha_t)
        masked = (x == mask_id)[..., None]
        moves = probs[..., :mask_id] * c
        total = moves.sum(-1, keepdim=True)
        moves = moves / total.clamp(min=1.0)
        unmasking = torch.cat([moves, (1 - moves.sum(-1, keepdim=True)).clamp(min=0)], dim=-1)
        committed = torch.nn.functional.one_hot(x, probs.shape[-1]).to(probs) * (1 - sigma)
        committed[..., mask_id] += sigma
        out = torch.where(masked, unmasking, probs)
        return torch.where((free & (x != mask_id))[..., None], committed, out)
