"""Training objectives. Each returns, per sequence, a one-sample estimate of a bound on -log p(x0) in nats.

A diffusion objective draws a time t, corrupts x0 with the forward process, runs the network and
scores the result; its expectation over t is the negative ELBO, so the training loss is a
likelihood bound. It also turns the network's raw output into log concrete scores for the samplers
(`log_score`). Objectives are chosen by name through `OBJECTIVES`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .processes import Absorbing, Process
from .schedules import Schedule


def stratified_times(n: int, t_min: float, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """n times in [t_min, 1], one uniformly inside each of n equal strata: same mean as iid, lower variance."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    strata = (torch.arange(n, device=device, dtype=torch.float64) + u) / n
    return (t_min + (1 - t_min) * strata).float()


def log_expm1(x: torch.Tensor) -> torch.Tensor:
    """log(e^x - 1), accurate for small and large x."""
    return torch.where(x < 20, torch.log(torch.expm1(x)), x)


class Objective:
    name: str
    bound: str = "nelbo"  # "nelbo" for diffusion, "exact" for AR
    causal: bool = False

    def __init__(self, process: Process, schedule: Schedule):
        self.process = process
        self.schedule = schedule

    @property
    def vocab_size(self) -> int:
        return self.process.vocab_size

    @property
    def net_vocab(self) -> tuple[int, int]:
        """(input states, output columns) of the network this objective trains."""
        return self.process.num_states, self.vocab_size

    def loss(self, net, x0: torch.Tensor, t: torch.Tensor | None = None, generator=None, t_min: float = 1e-3):
        raise NotImplementedError


class DiffusionObjective(Objective):
    """Continuous-time diffusion: E_t E_{x_t | x0} [sum_i l_i(x_t, x0, t)] = negative ELBO."""

    def loss(self, net, x0, t=None, generator=None, t_min=1e-3):
        B = x0.shape[0]
        if t is None:
            t = stratified_times(B, t_min, generator, x0.device)
        sbar = self.schedule.total(t)
        sigma = self.schedule.rate(t)
        xt = self.process.perturb(x0, sbar[:, None], generator)
        out = net(xt, sbar).float()
        return self.position_loss(out, xt, x0, sbar[:, None], sigma[:, None]).sum(-1)

    def position_loss(self, out, xt, x0, sbar, sigma) -> torch.Tensor:
        """[B, L] per-position integrand; sbar and sigma are [B, 1]."""
        raise NotImplementedError

    def loss_at_mask_count(
        self, net, x0: torch.Tensor, k: torch.Tensor | None = None, generator=None, masked: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The absorbing NELBO in its discrete form, for a network that ignores time:

            NELBO = E_{k ~ U{1..L}} E_{M: k random positions masked} [ (L / k) sum_{i in M} f_i ],

        because int_0^1 (1/t) Binomial(k; L, t) dt = 1/k. Its weights are bounded by L, unlike the
        1/t of the time form, whose variance diverges (logarithmically) near t = 0. When the network
        ignores time, the integrand depends on t only through the weight sigma / expm1(sbar) (the log
        expm1(sbar) terms cancel), so any (sbar, sigma) with that ratio equal to L / k gives the same
        value; sbar = log 2 keeps every term finite, k = L included.
        """
        if not isinstance(self.process, Absorbing):
            raise ValueError("the mask-count form of the bound holds for the absorbing process only")
        B, L = x0.shape
        if masked is None:  # k positions chosen uniformly at random in each row
            ranks = torch.rand(B, L, generator=generator, device=x0.device).argsort(-1).argsort(-1)
            masked = ranks < k[:, None]
        k = masked.sum(-1)
        xt = torch.where(masked, self.process.mask_id, x0)
        sbar = torch.full((B,), math.log(2.0), device=x0.device)  # expm1(sbar) = 1
        sigma = L / k.float()
        out = net(xt, sbar).float()
        return self.position_loss(out, xt, x0, sbar[:, None], sigma[:, None]).sum(-1)

    def log_score(self, out: torch.Tensor, xt: torch.Tensor, sbar: torch.Tensor) -> torch.Tensor:
        """log s_y for the V real tokens, [B, L, V]; sbar broadcasts as [B, 1, 1]."""
        raise NotImplementedError


class ScoreEntropy(DiffusionObjective):
    """SEDD's denoising score entropy with the constant K(a) = a (log a - 1), so the loss is the NELBO.

    For x_t and each neighbour y one position away, with rho_y = p_t(y | x0) / p_t(x_t | x0):
        l_i = sigma(t) * sum_{y != x_t,i} Q[x_t,i, y] * [ s_y - rho_y log s_y + K(rho_y) ]
    Absorbing (Q = 1 from every token into the mask, r = 1 / expm1(sbar) at a masked position):
        l_i = sigma(t) * [ sum_{y<V} s_y - r log s_{x0_i} + r (log r - 1) ],  0 at unmasked positions.
    Parameterisation (absorbing): log s_y = o_y - log expm1(sbar) - log V, which makes the optimum
    o_y = log(V p(x0_i = y | x_t)) independent of t. The ratio of the current token to itself is 1.
    """

    name = "sedd"

    def log_score(self, out, xt, sbar):
        if isinstance(self.process, Absorbing):
            return out - log_expm1(sbar) - math.log(self.vocab_size)
        # Uniform: the network's output is the log score, with the current token's entry fixed at 0.
        return out.scatter(-1, xt[..., None], 0.0)

    def position_loss(self, out, xt, x0, sbar, sigma):
        log_s = self.log_score(out, xt, sbar[..., None])
        if isinstance(self.process, Absorbing):
            masked = xt == self.process.mask_id
            r = 1.0 / torch.expm1(sbar)
            positive = torch.logsumexp(log_s, dim=-1).exp()
            negative = r * log_s.gather(-1, x0[..., None]).squeeze(-1)
            constant = r * (torch.log(r) - 1)
            return torch.where(masked, sigma * (positive - negative + constant), 0.0)
        return self._uniform_position_loss(log_s, xt, x0, sbar, sigma)

    def _uniform_position_loss(self, log_s, xt, x0, sbar, sigma):
        V = self.vocab_size
        a = -torch.expm1(-sbar) / V  # p_t(y | x0) for y != x0
        b = torch.exp(-sbar) + a  # p_t(x0 | x0)
        same = (xt == x0)[..., None]
        rho = torch.where(same, (a / b)[..., None], torch.ones_like(log_s))
        rho = torch.where(~same & (torch.arange(V, device=xt.device) == x0[..., None]), (b / a)[..., None], rho)
        terms = log_s.exp() - rho * log_s + rho * (torch.log(rho) - 1)
        terms = terms.scatter(-1, xt[..., None], 0.0)  # y ranges over the neighbours y != x_t
        return sigma * terms.sum(-1) / V


class MDLM(DiffusionObjective):
    """MDLM (Sahoo et al.): the absorbing NELBO with a normalised SUBS parameterisation.

    s_y = softmax(o)_y / expm1(sbar) over real tokens (the mask logit is removed; unmasked positions
    are carried over), which turns the score entropy into
        l_i = sigma(t) / expm1(sbar) * ( -log p_theta(x0_i | x_t) )  at masked positions,
    i.e. (1/t) * cross-entropy under the log-linear schedule: the same bound, lower variance.
    """

    name = "mdlm"

    def __init__(self, process: Process, schedule: Schedule):
        if not isinstance(process, Absorbing):
            raise ValueError("mdlm is defined for the absorbing process only")
        super().__init__(process, schedule)

    def log_score(self, out, xt, sbar):
        return F.log_softmax(out, dim=-1) - log_expm1(sbar)

    def position_loss(self, out, xt, x0, sbar, sigma):
        masked = xt == self.process.mask_id
        nll = F.cross_entropy(out.transpose(1, 2), x0, reduction="none")
        return torch.where(masked, sigma / torch.expm1(sbar) * nll, 0.0)


OBJECTIVES: dict[str, type[Objective]] = {"sedd": ScoreEntropy, "mdlm": MDLM}
