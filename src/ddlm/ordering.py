"""Decoding order for masked diffusion: which masked positions to commit at each step.

Instead of letting each masked position unmask at random with the Tweedie probability, a policy
ranks the masked positions and commits the K best, K chosen so the number still masked follows the
schedule: after the step to time s, round(n_free * m(s)) positions remain masked, where
m(t) = (1 - exp(-sbar(t))) / (1 - exp(-sbar(1))) is the schedule's masked fraction (Kim et al.,
"Train for the worst, plan for the best"). The token committed at a position is drawn from the
model's prediction there, so only the order differs between policies.

With `remask` (RDM, Zheng et al.), committed tokens keep the score they were committed with and
compete with the new candidates every step: the best-scored positions stay or become committed,
and a committed token that is outranked returns to the mask.

`confidence` (Fast-dLLM, Wu et al.) commits, besides what the schedule asks, every masked position
whose top probability exceeds a threshold P, and at least one position per call: where the model is
sure it decodes many positions in one network call, so a sample may finish in far fewer calls than
`--steps`.
"""

from __future__ import annotations

import torch

from .errors import UserError
from .registry import Registry


class OrderPolicy:
    name: str

    def __init__(self, noise: float = 0.0, remask: bool = False, threshold: float | None = None):
        self.noise = noise  # Gumbel noise scale added to the scores (0: deterministic ranking)
        self.remask = remask
        self.threshold = threshold

    def refusal(self) -> str | None:
        """Why these settings make no sense for this policy (a one-line error), or None."""
        if self.threshold is not None:
            return f"--threshold is for --order confidence, not --order {self.name}"
        return None

    def keep_masked(self, probs: torch.Tensor, masked: torch.Tensor, free: torch.Tensor, fraction: float):
        """[B] how many free positions stay masked after this step: the schedule's count, round(n_free *
        m(t_next)), for a masked fraction m(t_next) = `fraction`."""
        return masked_target(free.sum(-1), fraction)

    def score(self, probs: torch.Tensor, generator) -> torch.Tensor:
        """[B, L] confidence of each position from the normalised prediction probs [B, L, V]."""
        raise NotImplementedError

    def noisy_score(self, probs, generator) -> torch.Tensor:
        score = self.score(probs, generator)
        if self.noise > 0:
            u = torch.rand(score.shape, generator=generator, device=score.device).clamp(1e-12, 1 - 1e-12)
            score = score + self.noise * -torch.log(-torch.log(u))
        return score


ORDERS: Registry[type[OrderPolicy]] = Registry("unmasking order")


@ORDERS.register
class RandomOrder(OrderPolicy):
    name = "random"

    def score(self, probs, generator):
        return torch.rand(probs.shape[:-1], generator=generator, device=probs.device)


@ORDERS.register
class TopProbability(OrderPolicy):
    name = "top-prob"

    def score(self, probs, generator):
        return probs.max(-1).values


@ORDERS.register
class TopMargin(OrderPolicy):
    name = "top-margin"

    def score(self, probs, generator):
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]


@ORDERS.register
class Confidence(TopProbability):
    """Rank by top probability; commit the schedule's count, every masked position whose top
    probability exceeds `threshold`, and at least one masked position, whichever is most."""

    name = "confidence"
    default_threshold = 0.9

    def __init__(self, noise: float = 0.0, remask: bool = False, threshold: float | None = None):
        super().__init__(noise, remask, self.default_threshold if threshold is None else threshold)

    def refusal(self) -> str | None:
        if self.remask:
            return "--remask: --order confidence commits tokens for good; use --order top-prob to remask"
        return None

    def keep_masked(self, probs, masked, free, fraction):
        n_masked = masked.sum(-1)
        sure = (masked & (probs.max(-1).values > self.threshold)).sum(-1)
        commit = torch.maximum(sure, (n_masked > 0).long())
        return torch.minimum(super().keep_masked(probs, masked, free, fraction), n_masked - commit)


def masked_target(n_free: torch.Tensor, masked_fraction: float) -> torch.Tensor:
    """How many free positions should still be masked at a time whose masked fraction is given."""
    return torch.round(n_free.double() * masked_fraction).long()


def commit_top(
    x: torch.Tensor,
    candidates: torch.Tensor,
    score: torch.Tensor,
    free: torch.Tensor,
    mask_id: int,
    keep_masked: torch.Tensor,
    committed_score: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Commit the best-scored positions so that exactly `keep_masked` [B] free positions stay masked.

    Without `committed_score` only masked positions compete (committed tokens are final). With it
    (RDM), committed positions compete with their stored scores and may return to the mask.
    """
    masked = x == mask_id
    n_free = free.sum(-1)
    if committed_score is None:
        competing = masked
        slots = masked.sum(-1) - keep_masked  # how many masked positions to commit now
        rank_score = torch.where(competing, score, -torch.inf)
    else:
        competing = free
        slots = n_free - keep_masked  # how many free positions end up committed
        rank_score = torch.where(free, torch.where(masked, score, committed_score), -torch.inf)
    order = rank_score.argsort(dim=-1, descending=True, stable=True)
    rank = order.argsort(-1)
    chosen = competing & (rank < slots.clamp(min=0)[:, None])
    if committed_score is None:
        return torch.where(chosen, candidates, x), None
    new_x = torch.where(chosen & masked, candidates, x)
    new_x = torch.where(free & ~chosen, mask_id, new_x)
    new_score = torch.where(chosen & masked, score, committed_score)
    return new_x, new_score


def order_policy(order: str | None, noise: float, remask: bool, threshold: float | None) -> OrderPolicy | None:
    """The unmasking order the flags --order, --order-noise, --remask and --threshold ask for (None: the
    sampler's own random unmasking), or a UserError naming the flag that does not fit."""
    order = "top-prob" if remask and order is None else order  # RDM re-ranks by confidence
    if order is None:
        if threshold is not None:
            raise UserError("--threshold is for --order confidence")
        return None
    if order not in ORDERS:
        raise UserError(f"--order {order}: unknown unmasking order; use one of {', '.join(ORDERS.names())}")
    policy = ORDERS[order](noise=noise, remask=remask, threshold=threshold)
    if (refusal := policy.refusal()) is not None:
        raise UserError(refusal)
    return policy
