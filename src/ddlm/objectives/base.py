"""What every objective shares: the bound it estimates, and the wiring it owns.

An objective is one model family's maths. `loss` returns, per sequence, a one-sample estimate of a
bound on -log p(x0) in nats: a diffusion objective draws a time t, corrupts x0 with the forward
process, runs the network and scores the result, and its expectation over t is the negative ELBO,
so the training loss is a likelihood bound. `log_score` turns the network's raw output into log
concrete scores for the samplers.

An objective also owns its wiring, so that adding one is a class in one module of this package plus
its registration (`@OBJECTIVES.register`, and the module's import in `__init__.py`):

* `options`: its own `ddlm train` flags (each a constructor keyword saved in the run's config);
* `refuse`: the run configurations it cannot train, with the one-line reason a user sees;
* `schedule_config`, `time_conditioning_default` and `settle_options`: its defaults;
* `sample` and `sampling_refusal`: the sampler that draws from it and the sampling flags it refuses;
* `for_evaluation` and `bound_at`: how `ddlm eval` estimates its held-out bound.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch

from ..processes import Absorbing, Process
from ..registry import Registry
from ..sampling import SampleResult, SampleSpec, generate
from ..schedules import LogLinear, Schedule
from .estimators import mask_counts, position_weight, settle_estimator_options, unit_draws
from .option import Option


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
    options: ClassVar[tuple[Option, ...]] = ()
    # Does it model a record as its length and its residues (p(n) p(residues | n)) when the data has
    # such records? AR does not need to: it stops at its end marker.
    models_length: ClassVar[bool] = True

    def __init__(self, process: Process, schedule: Schedule):
        self.process = process
        self.schedule = schedule

    # --- wiring: what a run of this objective may be -----------------------------------------------
    @classmethod
    def refuse(cls, config) -> str | None:
        """Why this objective cannot train the run configuration `config` (a `RunConfig`: its process,
        schedule, time_conditioning and, once the data is read, length), or None if it can."""
        return None

    @classmethod
    def schedule_config(cls, process: str, name: str | None = None) -> dict:
        """The noise schedule of a run: `name` if the user chose one, else loglinear (geometric for uniform)."""
        if name is not None:
            return {"name": name}
        return {"name": "geometric"} if process == "uniform" else {"name": "loglinear", "eps": 1e-3}

    @classmethod
    def settle_options(cls, options: dict, process: str) -> dict:
        """Its options for a run on `process`, with those whose default is None (the user left them
        open) chosen; the run's config.json saves the result, so a later default changes no run."""
        return options

    @classmethod
    def time_conditioning_default(cls, process: str) -> bool:
        """Off for the absorbing process (costs nothing, makes the sampler's cache exact), on otherwise."""
        return process != "absorbing"

    @property
    def vocab_size(self) -> int:
        return self.process.vocab_size

    @property
    def net_vocab(self) -> tuple[int, int]:
        """(input states, output columns) of the network this objective trains."""
        return self.process.num_states, self.vocab_size

    # --- the bound ---------------------------------------------------------------------------------
    def loss(self, net, x0: torch.Tensor, t: torch.Tensor | None = None, generator=None, t_min: float = 1e-3):
        """[B] one-sample estimate of the bound on -log p(x0), nats per sequence."""
        raise NotImplementedError

    def training_loss(self, net, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """[B] what the optimiser minimises; the bound itself unless the objective adds an auxiliary term."""
        return self.loss(net, x0, generator=generator)

    def adapt(self, net, x0: torch.Tensor, generator=None) -> dict | None:
        """Fit the training estimator to the records x0 at an evaluation (bd3lm's --mask-rates auto);
        what changed, for the metrics log, or None when the objective has nothing to fit."""
        return None

    def training_state(self) -> dict:
        """What `adapt` has fitted, saved in each checkpoint so a resumed run goes on with it."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """Take back a checkpoint's `training_state`."""

    @property
    def length_multiple(self) -> int:
        """A training sequence may be cut short only to a multiple of this many positions."""
        return 1

    def length_nll(self, net, x0: torch.Tensor) -> torch.Tensor:
        """[B] -log p(n) of each record's length n (its moving tokens, the residues) under the network's
        length head: the term that completes the bound, -log p(x) <= -log p(n) + NELBO(residues | n).
        Zero for a network without one (a fixed window models its length with its markers)."""
        log_p = net.length_log_probs() if hasattr(net, "length_log_probs") else None
        if log_p is None:
            return torch.zeros(x0.shape[0], device=x0.device)
        return -log_p[self.process.moves(x0).sum(-1) - 1]

    def for_evaluation(self) -> Objective:
        """The objective whose estimate `bound_at` is an exact bound (see evaluate/likelihood.py)."""
        return self

    def bound_at(self, net, x0: torch.Tensor, u: torch.Tensor, generator=None) -> torch.Tensor:
        """[B] the bound estimated at the stratified uniform numbers u in (0, 1) (float64, one per row)."""
        return self.loss(net, x0, t=u.float(), generator=generator)

    # --- sampling ----------------------------------------------------------------------------------
    def sample(
        self,
        net,
        batch: int,
        length: int,
        spec: SampleSpec,
        *,
        clamp: torch.Tensor | None = None,
        clamp_values: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> SampleResult:
        """`batch` sequences of `length` tokens; positions where clamp [batch, length] is True hold clamp_values."""
        raise NotImplementedError

    def sampling_refusal(self, spec: SampleSpec, animate: bool = False) -> str | None:
        """Why this objective cannot sample as `spec` asks (or draw the denoising animation), or None."""
        return None

    def distill_refusal(self) -> str | None:
        """Why `ddlm distill` cannot shorten this objective's sampler (distill.py), or None."""
        return f"ddlm distill shortens a masked diffusion sampler (mdlm, sedd absorbing); this run is {self.name}"

    @property
    def any_order(self) -> bool:
        """Can the network give p(x_i | any subset of the other positions) (a masked diffusion)? Then it
        scores the given residues of a template in any order (infill.py)."""
        return False

    def mix_guided(self, conditional: torch.Tensor, unconditional: torch.Tensor, gamma: float) -> torch.Tensor:
        """Classifier-free guidance on the network's raw outputs given the label and given the null label:
        gamma * conditional + (1 - gamma) * unconditional. Where the objective reads the output through a
        softmax (MDLM's clean-token prediction, D3PM's x0 prediction, AR's next-token logits) that is
            log p_gamma(y | .) = gamma log p(y | ., label) + (1 - gamma) log p(y | ., null) + const,
        renormalised over the vocabulary; where the output is a log rate (SEDD uniform), the log rates
        mix. gamma = 1 is the conditional model, 0 the unconditional one, > 1 sharper."""
        return gamma * conditional + (1 - gamma) * unconditional

    def steps_taken(self, steps: int, length: int) -> int:
        """How many reverse steps `sample` takes when asked for `steps` on sequences of `length`."""
        return steps


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
ANIMATION_REFUSAL = "--animate shows the reverse diffusion; it needs a non-block diffusion run without --semi-ar"


class DiffusionObjective(Objective):
    """Continuous-time diffusion: E_t E_{x_t | x0} [sum_i l_i(x_t, x0, t)] = negative ELBO.

    The keywords choose how training estimates it (objectives/estimators.py): the `train_form` (time or
    mask count), the batch's `noise_draws`, the `count_sampling` and the masked positions' `loss_weight`.

    With `self_conditioning` the network also reads its own estimate of x0 (`estimate`): in training a
    first pass without one gives it, on half the batches (drawn from the noise generator); the bound is
    evaluated the same way, always with the first pass; a sampler feeds each evaluation the estimate of
    the sequence's previous one (zero at the first)."""

    continuous_time = True

    def __init__(
        self,
        process: Process,
        schedule: Schedule,
        train_form: str = "time",
        noise_draws: str = "stratified",
        count_sampling: str = "uniform",
        loss_weight: float = 1.0,
        self_conditioning: bool = False,
    ):
        super().__init__(process, schedule)
        self.train_form, self.noise_draws = train_form, noise_draws
        self.count_sampling, self.loss_weight = count_sampling, loss_weight
        self.self_conditioning = self_conditioning

    @classmethod
    def settle_options(cls, options, process):
        if "train_form" not in options:  # an objective without the estimator options (d3pm, bd3lm)
            return options
        return settle_estimator_options(options, masked=process == "absorbing")

    def network(self, net, xt: torch.Tensor, sbar: torch.Tensor, condition: bool | torch.Tensor = True) -> torch.Tensor:
        """The network's output at x_t, in float32. A self-conditioned objective feeds it an estimate of
        x0: `condition` a tensor is that estimate; True estimates it first by a pass without one (no
        gradient); False gives none."""
        if not self.self_conditioning or condition is False:
            return net(xt, sbar).float()
        if condition is True:
            with torch.no_grad():
                condition = self.estimate(net(xt, sbar).float(), xt)
        return net(xt, sbar, x0_estimate=condition).float()

    def estimate(self, out: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """[B, L, V] the network's estimate of x0 from its output: the predicted distribution at a masked
        position, the token itself at an unmasked moving one, nothing at a context token."""
        probs = torch.softmax(self.on_support(out), dim=-1)
        masked = (xt == self.process.mask_id)[..., None]
        known = torch.nn.functional.one_hot(xt.clamp(max=self.vocab_size - 1), self.vocab_size).to(probs)
        known = known * self.process.moves(xt)[..., None]
        return torch.where(masked, probs, known)

    def training_loss(self, net, x0, generator=None):
        """[B] one draw per sequence of the estimator the options choose (the bound, when the weight is 1)."""
        condition = self.self_conditioning and bool(torch.rand((), generator=generator, device=x0.device) < 0.5)
        u = unit_draws(x0.shape[0], self.noise_draws, generator, x0.device)
        if self.train_form == "time":
            t_min = 1e-3
            t = (t_min + (1 - t_min) * u).float()
            return self.loss(net, x0, t=t, generator=generator, condition=condition)
        n = self.process.moves(x0).sum(-1)
        k, ratio = mask_counts(u, n, self.count_sampling)
        weight = (position_weight(k, n, self.loss_weight) * ratio).float()
        return self.loss_at_mask_count(net, x0, k, generator=generator, weight=weight, condition=condition)

    @property
    def time_separable(self) -> bool:
        """True if, at a masked position of the absorbing process, the scores of a network that ignores
        time are s_y(t) = s_y(t') expm1(sbar(t')) / expm1(sbar(t)) -- the time factor of the true ratios
        p_t(y) / p_t(mask). Then one evaluation fixes a sequence's scores at every t until it changes."""
        return False

    @property
    def masked(self) -> bool:
        """Is this a masked (absorbing) diffusion, whose positions can be unmasked in a chosen order?"""
        return isinstance(self.process, Absorbing)

    @property
    def any_order(self) -> bool:
        return self.masked

    def distill_refusal(self):
        if not (self.masked and self.time_separable):
            return super().distill_refusal()
        if self.self_conditioning:
            return "ddlm distill: a self-conditioned run is not supported (its sampler feeds each call an estimate)"
        return None

    def loss(self, net, x0, t=None, generator=None, t_min=1e-3, condition: bool = True):
        B = x0.shape[0]
        if t is None:
            t = stratified_times(B, t_min, generator, x0.device)
        sbar = self.schedule.total(t)
        sigma = self.schedule.rate(t)
        xt = self.process.perturb(x0, sbar[:, None], generator)
        out = self.network(net, xt, sbar, condition)
        return self.position_loss(out, xt, x0, sbar[:, None], sigma[:, None]).sum(-1)

    def position_loss(self, out, xt, x0, sbar, sigma) -> torch.Tensor:
        """[B, L] per-position integrand; sbar and sigma are [B, 1]."""
        raise NotImplementedError

    def loss_at_mask_count(
        self,
        net,
        x0: torch.Tensor,
        k: torch.Tensor | None = None,
        generator=None,
        masked: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        condition: bool = True,
    ) -> torch.Tensor:
        """The absorbing NELBO in its discrete form, for a network that ignores time: with n the number
        of moving positions of a row (all L in a fixed window, the n residues of a record),

            NELBO = E_{k ~ U{1..n}} E_{M: k random moving positions masked} [ (n / k) sum_{i in M} f_i ],

        because int_0^1 (1/t) Binomial(k; n, t) dt = 1/k. Its weights are bounded by n, unlike the
        1/t of the time form, whose variance diverges (logarithmically) near t = 0. When the network
        ignores time, the integrand depends on t only through the weight sigma / expm1(sbar) (the log
        expm1(sbar) terms cancel), so any (sbar, sigma) with that ratio equal to n / k gives the same
        value; sbar = log 2 keeps every term finite, k = n included. `weight` [B] replaces n / k (training
        estimators that reweight, see estimators.py).
        """
        if not self.masked:
            raise ValueError("the mask-count form of the bound holds for the absorbing process only")
        B, L = x0.shape
        moving = self.process.moves(x0)
        if masked is None:  # k of the moving positions, chosen uniformly at random in each row
            u = torch.rand(B, L, generator=generator, device=x0.device)
            ranks = torch.where(moving, u, 2.0).argsort(-1).argsort(-1)
            masked = ranks < k[:, None]
        k = masked.sum(-1)
        xt = torch.where(masked, self.process.mask_id, x0)
        sbar = torch.full((B,), math.log(2.0), device=x0.device)  # expm1(sbar) = 1
        sigma = moving.sum(-1) / k.float() if weight is None else weight
        out = self.network(net, xt, sbar, condition)
        return self.position_loss(out, xt, x0, sbar[:, None], sigma[:, None]).sum(-1)

    def log_score(self, out: torch.Tensor, xt: torch.Tensor, sbar: torch.Tensor) -> torch.Tensor:
        """log s_y for the V real tokens, [B, L, V]; sbar broadcasts as [B, 1, 1]. A context token
        (outside the process's support) is never a target: its score is 0 (log -inf)."""
        raise NotImplementedError

    def on_support(self, out: torch.Tensor) -> torch.Tensor:
        """The network output with the context tokens' columns at -inf (unchanged when all tokens move)."""
        if self.process.support == self.vocab_size:
            return out
        return out.masked_fill(self.process.support_mask(out) == 0, -torch.inf)

    def for_evaluation(self) -> Objective:
        """For the absorbing process, the same objective under the eps = 0 log-linear schedule: the masking
        probability then runs over all of (0, 1), so no prior or reconstruction term is left out. With a
        time-independent network this is the bound it was trained on (the absorbing NELBO does not depend
        on the schedule, MDLM)."""
        if not self.masked:
            return self
        bound = copy.copy(self)  # a copy keeps the objective's own options (e.g. bd3lm's block size)
        bound.schedule = LogLinear(eps=0.0)
        return bound

    def bound_at(self, net, x0, u, generator=None):
        """The mask-count form at k = floor(u L) + 1 (stratified over 1..L) when the process is absorbing
        and the network ignores time; the time form at t = u otherwise."""
        if self.masked and not getattr(net, "time_conditioned", True):
            k = (u * self.process.moves(x0).sum(-1)).floor().long() + 1
            return self.loss_at_mask_count(net, x0, k, generator=generator)
        return super().bound_at(net, x0, u, generator)

    def sample(self, net, batch, length, spec, *, clamp=None, clamp_values=None, generator=None, device="cpu"):
        """The reverse process from t = 1 (`sampling.generate`)."""
        return generate(
            net, self, batch, length, spec, clamp=clamp, clamp_values=clamp_values, generator=generator, device=device
        )

    def sampling_refusal(self, spec, animate=False):
        if spec.order is not None and not self.masked:
            return "--order and --remask need a masked (absorbing) diffusion run"
        if (spec.temperature != 1.0 or spec.top_p < 1.0) and not self.masked:
            return (
                "--temperature and --top-p shape which token a masked position becomes; a uniform-process run has none"
            )
        if animate and spec.semi_ar_length:
            return ANIMATION_REFUSAL
        return None
