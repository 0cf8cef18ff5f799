"""Forward processes: how a clean token is corrupted, and the closed forms the samplers need.

Every token evolves independently under the rate matrix sigma(t) Q, so after total noise sbar
the transition kernel is exp(sbar Q). Column convention as in the seed README:
Q[a, b] is the rate of moving from state b to state a, and P(x_t = a | x_0 = b) = exp(sbar Q)[a, b].

Scores are passed around as `s` of shape [..., V]: the estimated ratios p_t(x with the position
set to y) / p_t(x) for the V real tokens y. The ratio of the current state to itself is 1 and is
implied, so the mask never needs a column of its own.

`support` R <= V: only the tokens 0..R-1 move (a protein's residues); tokens R..V-1 are context (its
start, end and padding markers), which the process never changes and never reaches. With R = V every
token moves, as in a fixed-window model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Registry


class Process:
    """A per-token continuous-time Markov chain on `num_states` states; tokens >= `support` are frozen."""

    name: str

    def __init__(self, vocab_size: int, support: int | None = None):
        self.vocab_size = vocab_size  # V real tokens
        self.support = vocab_size if support is None else support  # R: tokens 0..R-1 move
        if not 1 <= self.support <= vocab_size:
            raise ValueError(f"support {self.support} must be in [1, {vocab_size}]")

    def moves(self, x: torch.Tensor) -> torch.Tensor:
        """True where a token can move: it is one of the R moving tokens (or a state the process made)."""
        return x < self.support

    def support_mask(self, like: torch.Tensor) -> torch.Tensor:
        """[V] 1 for the moving tokens, 0 for the context tokens, in the dtype and device of `like`."""
        return (torch.arange(self.vocab_size, device=like.device) < self.support).to(like.dtype)

    @property
    def num_states(self) -> int:
        raise NotImplementedError

    def rate_matrix(self) -> torch.Tensor:
        """Dense Q (num_states x num_states), for tests against `torch.matrix_exp` only."""
        raise NotImplementedError

    def transition_matrix(self, sbar: float) -> torch.Tensor:
        """Closed form of exp(sbar Q), dense; for tests and the D3PM posterior on small vocabularies."""
        raise NotImplementedError

    def perturb(self, x0: torch.Tensor, sbar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Sample x_t ~ exp(sbar Q)[:, x0] independently per token; sbar broadcasts over positions."""
        raise NotImplementedError

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
        """A draw from the process's limit (t = 1) at a moving position."""
        raise NotImplementedError

    def finished(self, xt: torch.Tensor) -> torch.Tensor:
        """[B] True where a sequence can no longer change in the reverse process."""
        return torch.zeros(xt.shape[0], dtype=torch.bool, device=xt.device)

    def transition_row(self, xt: torch.Tensor, sbar: torch.Tensor) -> torch.Tensor:
        """P(x_t = xt | x_0 = c) for every state c: the row xt of exp(sbar Q), [..., num_states]."""
        raise NotImplementedError

    def transition_apply(self, v: torch.Tensor, sbar: torch.Tensor) -> torch.Tensor:
        """exp(sbar Q) v along the last dimension: (P v)[a] = sum_c P(a | c) v_c, [..., num_states]."""
        raise NotImplementedError

    def tweedie_probs(self, xt: torch.Tensor, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Tweedie tau-leaping step, d = sbar(t) - sbar(s) > 0:
        P(x_s = y) proportional to [exp(-d Q) s]_y * exp(d Q)[x_t, y], over all num_states states."""
        raise NotImplementedError

    def reverse_rates(self, xt: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Reverse-time rates per unit sbar: R(x_t -> y) = Q[x_t, y] s_y for y != x_t (zero at x_t)."""
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


PROCESSES: Registry[type[Process]] = Registry("process")


@PROCESSES.register
class Absorbing(Process):
    """Each moving token jumps to the mask (state V) at rate sigma(t) and stays there.

    On the moving tokens exp(a Q) = [[e^{-a} I, 0], [(1 - e^{-a}) 1^T, 1]]: a token is masked with
    probability 1 - e^{-sbar}; a context token stays itself.
    """

    name = "absorbing"

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def num_states(self) -> int:
        return self.vocab_size + 1

    def rate_matrix(self) -> torch.Tensor:
        V, R = self.vocab_size, self.support
        Q = torch.zeros(V + 1, V + 1, dtype=torch.float64)
        Q[torch.arange(R), torch.arange(R)] = -1.0
        Q[V, :R] = 1.0
        return Q

    def transition_matrix(self, sbar: float) -> torch.Tensor:
        V, R = self.vocab_size, self.support
        keep = torch.exp(torch.tensor(-sbar, dtype=torch.float64))
        P = torch.eye(V + 1, dtype=torch.float64)
        P[:R, :R] = keep * torch.eye(R, dtype=torch.float64)
        P[V, :R] = 1 - keep
        return P

    def perturb(self, x0, sbar, generator):
        p_mask = -torch.expm1(-sbar)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        return torch.where((u < p_mask) & self.moves(x0), self.mask_id, x0)

    def prior_sample(self, shape, generator, device):
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def finished(self, xt):
        return ~(xt == self.mask_id).any(dim=-1)

    def transition_row(self, xt, sbar):
        keep = torch.exp(-sbar)
        moving = self.support_mask(keep)
        masked_row = torch.cat([(1 - keep) * moving.expand(*xt.shape, -1), torch.ones_like(xt[..., None])], -1)
        token_row = torch.where(self.moves(xt)[..., None], keep, 1.0) * F.one_hot(xt, self.num_states)
        return torch.where((xt == self.mask_id)[..., None], masked_row.to(token_row), token_row)

    def transition_apply(self, v, sbar):
        keep = torch.exp(-sbar)
        V, moving = self.vocab_size, self.support_mask(v)
        factor = torch.where(moving.bool(), keep, 1.0)  # a context token stays itself
        to_mask = (1 - keep) * (v[..., :V] * moving).sum(-1, keepdim=True) + v[..., V:]
        return torch.cat([factor * v[..., :V], to_mask], dim=-1)

    def tweedie_probs(self, xt, s, d):
        # At a masked position: P(y) = s_y (e^d - 1) for each moving y, and the rest stays masked.
        # An unmasked position never moves.
        unmask = s * self.support_mask(s) * torch.expm1(d)
        stay = (1 - unmask.sum(-1, keepdim=True)).clamp(min=0)
        masked_row = torch.cat([unmask, stay], dim=-1)
        return torch.where((xt == self.mask_id)[..., None], masked_row, F.one_hot(xt, self.num_states).to(s))

    def reverse_rates(self, xt, s):
        masked = (xt == self.mask_id)[..., None]
        rates = torch.cat([s * self.support_mask(s), torch.zeros_like(s[..., :1])], dim=-1)
        return torch.where(masked, rates, torch.zeros_like(rates))


@PROCESSES.register
class Uniform(Process):
    """Each moving token jumps to a uniformly random moving token at rate sigma(t): on the R moving
    tokens Q = (1/R) 1 1^T - I, and a context token never moves.

    exp(a Q) = e^{-a} I + (1 - e^{-a}) (1/R) 1 1^T on the moving block, since Q 1 = 0 and Q v = -v for v
    orthogonal to 1 there; the identity on the context tokens.
    """

    name = "uniform"

    @property
    def num_states(self) -> int:
        return self.vocab_size

    def rate_matrix(self) -> torch.Tensor:
        V, R = self.vocab_size, self.support
        Q = torch.zeros(V, V, dtype=torch.float64)
        Q[:R, :R] = torch.full((R, R), 1.0 / R, dtype=torch.float64) - torch.eye(R, dtype=torch.float64)
        return Q

    def transition_matrix(self, sbar: float) -> torch.Tensor:
        V, R = self.vocab_size, self.support
        keep = torch.exp(torch.tensor(-sbar, dtype=torch.float64))
        P = torch.eye(V, dtype=torch.float64)
        P[:R, :R] = keep * torch.eye(R, dtype=torch.float64) + (1 - keep) / R
        return P

    def perturb(self, x0, sbar, generator):
        p_jump = -torch.expm1(-sbar)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        noise = torch.randint(0, self.support, x0.shape, generator=generator, device=x0.device)
        return torch.where((u < p_jump) & self.moves(x0), noise, x0)

    def prior_sample(self, shape, generator, device):
        return torch.randint(0, self.support, shape, generator=generator, device=device)

    def transition_row(self, xt, sbar):
        keep = torch.exp(-sbar)
        onehot = F.one_hot(xt, self.vocab_size)
        moving_row = keep * onehot + (1 - keep) / self.support * self.support_mask(keep)
        return torch.where(self.moves(xt)[..., None], moving_row, onehot.to(moving_row))

    def transition_apply(self, v, sbar):
        keep = torch.exp(-sbar)
        moving = self.support_mask(v)
        mixed = keep * v + (1 - keep) / self.support * (v * moving).sum(-1, keepdim=True)
        return torch.where(moving.bool(), mixed, v)

    def tweedie_probs(self, xt, s, d):
        R, moving = self.support, self.support_mask(s)
        s = s.scatter(-1, xt[..., None], 1.0) * moving  # the ratio of the current state to itself
        e = torch.exp(d)
        # exp(-d Q) s = e^d s + (1 - e^d)/R * sum(s);  exp(d Q)[x_t, y] = e^{-d} [y = x_t] + (1 - e^{-d}) / R
        staggered = e * s + (1 - e) / R * s.sum(-1, keepdim=True)
        into_xt = -torch.expm1(-d) / R + torch.exp(-d) * F.one_hot(xt, self.vocab_size).to(s)
        probs = (staggered * into_xt * moving).clamp(min=0)
        probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-30)
        return torch.where(self.moves(xt)[..., None], probs, F.one_hot(xt, self.vocab_size).to(s))

    def reverse_rates(self, xt, s):
        rates = (s * self.support_mask(s) / self.support).scatter(-1, xt[..., None], 0.0)
        return torch.where(self.moves(xt)[..., None], rates, torch.zeros_like(rates))
