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
    continuous_time: bool = False

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
        """[B] one-sample estimate of the bound on -log p(x0), nats per sequence."""
        raise NotImplementedError

    def training_loss(self, net, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """[B] what the optimiser minimises; the bound itself unless the objective adds an auxiliary term."""
        return self.loss(net, x0, generator=generator)


class DiffusionObjective(Objective):
    """Continuous-time diffusion: E_t E_{x_t | x0} [sum_i l_i(x_t, x0, t)] = negative ELBO."""

    continuous_time = True

    @property
    def time_separable(self) -> bool:
        """True if, at a masked position of the absorbing process, the scores of a network that ignores
        time are s_y(t) = s_y(t') expm1(sbar(t')) / expm1(sbar(t)) -- the time factor of the true ratios
        p_t(y) / p_t(mask). Then one evaluation fixes a sequence's scores at every t until it changes."""
        return False

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

    @property
    def time_separable(self) -> bool:
        return isinstance(self.process, Absorbing)

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

    time_separable = True

    def log_score(self, out, xt, sbar):
        return F.log_softmax(out, dim=-1) - log_expm1(sbar)

    def position_loss(self, out, xt, x0, sbar, sigma):
        masked = xt == self.process.mask_id
        nll = F.cross_entropy(out.transpose(1, 2), x0, reduction="none")
        return torch.where(masked, sigma / torch.expm1(sbar) * nll, 0.0)


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

    def __init__(self, process: Process, schedule: Schedule, steps: int = 1000, hybrid_lambda: float = 0.01):
        super().__init__(process, schedule)
        self.steps, self.hybrid_lambda = steps, hybrid_lambda

    def sbar_at(self, k: torch.Tensor) -> torch.Tensor:
        return torch.where(k > 0, self.schedule.total(k.double() / self.steps), 0.0)

    def log_score(self, out, xt, sbar):
        p0 = F.softmax(out, dim=-1)
        if isinstance(self.process, Absorbing):
            return torch.log(p0) - log_expm1(sbar)
        # s_y = E_{c ~ p~}[ P(y | c) / P(x_t | c) ]: the concrete score implied by the x0-prediction
        weights = p0 / self.process.transition_row(xt, sbar)
        return torch.log(self.process.transition_apply(weights, sbar).clamp(min=1e-30))

    def posterior(self, xk: torch.Tensor, x0_probs: torch.Tensor, sbar_k, sbar_prev) -> torch.Tensor:
        """sum_c q(x_{k-1} = a | x_k, x0 = c) w(c), normalised over a, for a distribution w over x0 (last dim S):
        proportional to P_step[x_k, a] * [exp(sbar_{k-1} Q) w]_a. A one-hot w gives the true posterior."""
        step = self.process.transition_row(xk, sbar_k - sbar_prev)
        joint = step * self.process.transition_apply(x0_probs, sbar_prev)
        return joint / joint.sum(-1, keepdim=True)

    def _terms(self, net, x0, k, generator):
        """Per-sequence L_vb estimate and auxiliary CE, both [B]."""
        S, V = self.process.num_states, self.vocab_size
        sbar_k, sbar_prev = self.sbar_at(k).float(), self.sbar_at(k - 1).float()
        xk = self.process.perturb(x0, sbar_k[:, None], generator)
        out = net(xk, sbar_k).float()
        p0 = F.pad(F.softmax(out, dim=-1), (0, S - V))  # no mass on the mask as a clean token
        sk, sp = sbar_k[:, None, None], sbar_prev[:, None, None]
        model = self.posterior(xk, p0, sk, sp)
        truth = self.posterior(xk, F.one_hot(x0, S).float(), sk, sp)
        log_model = torch.log(model.clamp(min=1e-30))
        kl = torch.where(truth > 0, truth * (torch.log(truth.clamp(min=1e-30)) - log_model), 0.0).sum(-1)
        nll_first = -log_model.gather(-1, x0[..., None]).squeeze(-1)  # k = 1: -log p_theta(x0 | x_1)
        per_pos = torch.where((k == 1)[:, None], nll_first, kl)
        corrupted = xk != x0 if not isinstance(self.process, Absorbing) else xk == self.process.mask_id
        ce = torch.where(corrupted, F.cross_entropy(out.transpose(1, 2), x0, reduction="none"), 0.0)
        return self.steps * per_pos.sum(-1) + self.prior_kl(x0), ce.sum(-1)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """[B] KL(q(x_T | x0) || prior): 0 for absorbing when sbar(1) is infinite, exact otherwise."""
        sbar_T = self.schedule.total(torch.tensor(1.0, dtype=torch.float64))
        if not torch.isfinite(sbar_T):
            return torch.zeros(x0.shape[0], device=x0.device)
        if isinstance(self.process, Absorbing):
            return torch.full((x0.shape[0],), math.inf, device=x0.device)  # mass left off the all-mask prior
        q = self.process.transition_row(x0, sbar_T.float())  # symmetric kernel: row = column
        return (q * torch.log(q * self.vocab_size)).sum(-1).sum(-1)

    def _times(self, B, generator, device):
        u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)
        return ((torch.arange(B, device=device) + u) / B * self.steps).floor().long() + 1  # stratified in 1..T

    def loss(self, net, x0, t=None, generator=None, t_min=1e-3):
        k = self._times(x0.shape[0], generator, x0.device) if t is None else (t * self.steps).ceil().long().clamp(1)
        return self._terms(net, x0, k, generator)[0]

    def training_loss(self, net, x0, generator=None):
        vb, ce = self._terms(net, x0, self._times(x0.shape[0], generator, x0.device), generator)
        return vb + self.hybrid_lambda * ce


class AutoRegressive(Objective):
    """The AR baseline: the same transformer with causal attention, exact NLL by next-token cross-entropy.

    The input is shifted right behind a start token (id V), so every one of the L positions is
    predicted and the NLL covers exactly the tokens a diffusion bound covers.
    """

    name = "ar"
    bound = "exact"
    causal = True

    @property
    def net_vocab(self) -> tuple[int, int]:
        return self.vocab_size + 1, self.vocab_size

    @property
    def start_id(self) -> int:
        return self.vocab_size

    def loss(self, net, x0, t=None, generator=None, t_min=1e-3):
        start = torch.full_like(x0[:, :1], self.start_id)
        logits = net(torch.cat([start, x0[:, :-1]], dim=1)).float()
        return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").sum(-1)


OBJECTIVES: dict[str, type[Objective]] = {"sedd": ScoreEntropy, "mdlm": MDLM, "d3pm": D3PM, "ar": AutoRegressive}
