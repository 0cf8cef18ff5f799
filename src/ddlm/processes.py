"""Forward processes: how a clean token is corrupted, and the closed forms the samplers need.

Every token evolves independently under the rate matrix sigma(t) Q, so after total noise sbar
the transition kernel is exp(sbar Q). Column convention as in the seed README:
Q[a, b] is the rate of moving from state b to state a, and P(x_t = a | x_0 = b) = exp(sbar Q)[a, b].

Scores are passed around as `s` of shape [..., V]: the estimated ratios p_t(x with the position
set to y) / p_t(x) for the V real tokens y. The ratio of the current state to itself is 1 and is
implied, so the mask never needs a column of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Registry


class Process:
    """A per-token continuous-time Markov chain on `num_states` states."""

    name: str

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size  # V real tokens

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
        """A draw from the process's limit (t = 1)."""
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
    """Each token jumps to the mask (state V) at rate sigma(t) and stays there.

    exp(a Q) = [[e^{-a} I, 0], [(1 - e^{-a}) 1^T, 1]]: a token is masked with probability 1 - e^{-sbar}.
    """

    name = "absorbing"

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def num_states(self) -> int:
        return self.vocab_size + 1

    def rate_matrix(self) -> torch.Tensor:
        V = self.vocab_size
        Q = torch.zeros(V + 1, V + 1, dtype=torch.float64)
        Q[torch.arange(V), torch.arange(V)] = -1.0
        Q[V, :V] = 1.0
        return Q

    def transition_matrix(self, sbar: float) -> torch.Tensor:
        V = self.vocab_size
        keep = torch.exp(torch.tensor(-sbar, dtype=torch.float64))
        P = torch.zeros(V + 1, V + 1, dtype=torch.float64)
        P[:V, :V] = keep * torch.eye(V, dtype=torch.float64)
        P[V, :V] = 1 - keep
        P[V, V] = 1.0
        return P

    def perturb(self, x0, sbar, generator):
        p_mask = -torch.expm1(-sbar)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        return torch.where(u < p_mask, self.mask_id, x0)

    def prior_sample(self, shape, generator, device):
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def finished(self, xt):
        return ~(xt == self.mask_id).any(dim=-1)

    def transition_row(self, xt, sbar):
        keep = torch.exp(-sbar)
        masked_row = torch.cat([(1 - keep).expand(*xt.shape, self.vocab_size), torch.ones_like(xt[..., None])], -1)
        token_row = keep * F.one_hot(xt, self.num_states)
        return torch.where((xt == self.mask_id)[..., None], masked_row.to(token_row), token_row)

    def transition_apply(self, v, sbar):
        keep = torch.exp(-sbar)
        to_mask = (1 - keep) * v[..., : self.vocab_size].sum(-1, keepdim=True) + v[..., self.vocab_size :]
        return torch.cat([keep * v[..., : self.vocab_size], to_mask], dim=-1)

    def tweedie_probs(self, xt, s, d):
        # At a masked position: P(y) = s_y (e^d - 1) for y < V, and the rest stays masked.
        # An unmasked position never moves.
        unmask = s * torch.expm1(d)
        stay = (1 - unmask.sum(-1, keepdim=True)).clamp(min=0)
        masked_row = torch.cat([unmask, stay], dim=-1)
        return torch.where((xt == self.mask_id)[..., None], masked_row, F.one_hot(xt, self.num_states).to(s))

    def reverse_rates(self, xt, s):
        masked = (xt == self.mask_id)[..., None]
        rates = torch.cat([s, torch.zeros_like(s[..., :1])], dim=-1)
        return torch.where(masked, rates, torch.zeros_like(rates))


@PROCESSES.register
class Uniform(Process):
    """Each token jumps to a uniformly random token at rate sigma(t): Q = (1/V) 1 1^T - I.

    exp(a Q) = e^{-a} I + (1 - e^{-a}) (1/V) 1 1^T, since Q 1 = 0 and Q v = -v for v orthogonal to 1.
    """

    name = "uniform"

    @property
    def num_states(self) -> int:
        return self.vocab_size

    def rate_matrix(self) -> torch.Tensor:
        V = self.vocab_size
        return torch.full((V, V), 1.0 / V, dtype=torch.float64) - torch.eye(V, dtype=torch.float64)

    def transition_matrix(self, sbar: float) -> torch.Tensor:
        V = self.vocab_size
        keep = torch.exp(torch.tensor(-sbar, dtype=torch.float64))
        return keep * torch.eye(V, dtype=torch.float64) + (1 - keep) / V

    def perturb(self, x0, sbar, generator):
        p_jump = -torch.expm1(-sbar)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        noise = torch.randint(0, self.vocab_size, x0.shape, generator=generator, device=x0.device)
        return torch.where(u < p_jump, noise, x0)

    def prior_sample(self, shape, generator, device):
        return torch.randint(0, self.vocab_size, shape, generator=generator, device=device)

    def transition_row(self, xt, sbar):
        keep = torch.exp(-sbar)
        return keep * F.one_hot(xt, self.vocab_size) + (1 - keep) / self.vocab_size

    def transition_apply(self, v, sbar):
        keep = torch.exp(-sbar)
        return keep * v + (1 - keep) / self.vocab_size * v.sum(-1, keepdim=True)

    def tweedie_probs(self, xt, s, d):
        V = self.vocab_size
        s = s.scatter(-1, xt[..., None], 1.0)  # the ratio of the current state to itself
        e = torch.exp(d)
        # exp(-d Q) s = e^d s + (1 - e^d)/V * sum(s);  exp(d Q)[x_t, y] = e^{-d} [y = x_t] + (1 - e^{-d}) / V
        staggered = e * s + (1 - e) / V * s.sum(-1, keepdim=True)
        into_xt = -torch.expm1(-d) / V + torch.exp(-d) * F.one_hot(xt, V).to(s)
        probs = (staggered * into_xt).clamp(min=0)
        return probs / probs.sum(-1, keepdim=True)

    def reverse_rates(self, xt, s):
        rates = s / self.vocab_size
        return rates.scatter(-1, xt[..., None], 0.0)
