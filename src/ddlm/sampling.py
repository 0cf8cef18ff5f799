"""Reverse-process samplers for the diffusion objectives.

`generate` runs the reverse process from t = 1 to 0 in `steps` steps, the last of which denoises
(t -> 0), so `steps` steps take at most `steps` network calls and a finished absorbing sample never
contains the mask. Each step asks the step rule (`TauLeaping`, `Euler`) for
per-position transition probabilities and draws the next state with one uniform number per
position. The clocked sampler below draws its coins in another order: same law, other samples.

Caching (MDLM): if the network ignores time and a sequence did not change in a step, its network
output is still exact, so it is reused. This is tracked per sequence: only the sequences that
changed are re-evaluated, and `nfe` counts evaluations per sequence. For the absorbing process each
change unmasks at least one position, so a sequence of L positions costs at most L + 1 evaluations
whatever the number of steps.

With the cache, absorbing sequences also run on their own clocks (`generate_clocked`): a sequence's
scores stay valid until it changes, so it can walk through the steps without the network until one of
its positions unmasks, and the evaluations its next state needs are batched with those of the other
sequences, whatever step each has reached. One batched call per unmasking event, instead of a call
on the few sequences that happened to change at each step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from .device import low_precision_copy
from .ordering import OrderPolicy, commit_top
from .processes import Absorbing, Process
from .registry import Registry
from .schedules import Schedule


class StepRule:
    """Per-position transition probabilities over all states for one reverse step t -> t_next."""

    name: str

    def probs(self, process: Process, schedule: Schedule, xt, s, t: float, t_next: float) -> torch.Tensor:
        raise NotImplementedError

    def unmask_weight(self, schedule: Schedule, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """w such that a masked position of the absorbing process unmasks with probability
        min(1, w sum_y s_y) in the step t -> t_next, choosing y with probability proportional to s_y."""
        raise NotImplementedError


STEP_RULES: Registry[type[StepRule]] = Registry("step rule")


@STEP_RULES.register
class TauLeaping(StepRule):
    """Tweedie tau-leaping: exact per-position reverse step given the score (SEDD Alg. 2)."""

    name = "tau-leaping"

    def probs(self, process, schedule, xt, s, t, t_next):
        d = schedule.total(torch.tensor(t, dtype=torch.float64)) - schedule.total(
            torch.tensor(t_next, dtype=torch.float64)
        )
        return process.tweedie_probs(xt, s, d.to(s.dtype))

    def unmask_weight(self, schedule, t, t_next):
        return torch.expm1(schedule.total(t) - schedule.total(t_next))  # Absorbing.tweedie_probs


@STEP_RULES.register
class Euler(StepRule):
    """First-order step: P(y) = [y = x_t] + dt sigma(t) R(x_t -> y), with the stay mass clipped at 0."""

    name = "euler"

    def probs(self, process, schedule, xt, s, t, t_next):
        sigma = schedule.rate(torch.tensor(t, dtype=torch.float64)).item()
        move = process.reverse_rates(xt, s) * (sigma * (t - t_next))
        move = move.scatter(-1, xt[..., None], 0.0)
        total = move.sum(-1, keepdim=True)
        # If the moves exceed probability 1 (large steps), rescale them so the row stays a distribution.
        move = move / total.clamp(min=1.0)
        stay = (1 - move.sum(-1, keepdim=True)).clamp(min=0)
        return move.scatter_add(-1, xt[..., None], stay)

    def unmask_weight(self, schedule, t, t_next):
        return schedule.rate(t) * (t - t_next)  # the absorbing rates are s_y, rescaled when they pass 1


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row of unnormalised `probs` [..., S] by inverse CDF with one uniform each."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[:-1], generator=generator, device=probs.device, dtype=torch.float64)
    idx = (cdf < (u * cdf[..., -1])[..., None]).sum(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [B, L]
    nfe: torch.Tensor  # [B] network evaluations each sequence received
    history: list[torch.Tensor] | None = None  # states after each step, when asked for


@dataclass
class SampleSpec:
    """Everything that shapes sampling besides the model: steps, step rule, order, conditioning."""

    steps: int = 128
    rule: StepRule = field(default_factory=TauLeaping)
    use_cache: bool = True
    kv_cache: bool = True  # bd3lm: the sampled prefix's keys and values computed once (objectives/bd3lm.py)
    order: OrderPolicy | None = None
    clamp: torch.Tensor | None = None  # [L] bool, the same for every sequence, or [n, L], one per sequence
    clamp_values: torch.Tensor | None = None  # [L] or [n, L]
    allowed: torch.Tensor | None = None  # [V] bool: the tokens a free position may become
    temperature: float = 1.0  # < 1 sharpens the choice of token at each position
    top_p: float = 1.0  # < 1 keeps only the nucleus: the likeliest tokens holding this much of the mass
    semi_ar_length: int | None = None  # grow past the window to this many tokens
    batch_size: int = 64
    # records that end: after end_id comes only pad_id, so a left-to-right sampler may stop once every
    # sequence of its batch has ended (proteins; set by the domain)
    end_id: int | None = None
    pad_id: int | None = None
    # a steered sampler (guidance/particles.py: reward-guided particles), which then draws every sample:
    # guide.sample(net, objective, batch, length, spec, ...) in place of objective.sample
    guide: object | None = None

    def shape(self, s: torch.Tensor) -> torch.Tensor:
        """The scores [..., V] as this spec samples them: the tokens not allowed at zero, then each
        position's distribution over tokens p_y = s_y / sum(s) raised to 1/temperature and cut to its
        top-p nucleus, renormalised, times the same sum(s). The sum is each position's total rate of
        change, so the controls change which token a position becomes, never when it changes."""
        if self.allowed is not None:
            s = s * self.allowed.to(s)
        if self.temperature == 1.0 and self.top_p >= 1.0:
            return s
        total = s.sum(-1, keepdim=True)
        log_p = torch.log(s.clamp(min=1e-30)) / self.temperature
        p = torch.softmax(torch.where(s > 0, log_p, -torch.inf), dim=-1)
        if self.top_p < 1.0:
            ranked, order = p.sort(-1, descending=True)
            outside = (ranked.cumsum(-1) - ranked) >= self.top_p  # the mass before a token already reaches top_p
            p = p.masked_fill(outside.scatter(-1, order, outside), 0.0)
            p = p / p.sum(-1, keepdim=True)
        return torch.nan_to_num(p) * total


def reverse_times(schedule: Schedule, steps: int) -> list[float]:
    """steps + 1 evenly spaced times from t = 1 down to 0; the last step (to t = 0) is the denoising one
    (`final_probs`). A schedule with sbar(1) = inf (all masked at t = 1, as D3PM's absorbing one) starts
    just below 1, where the total noise is finite; the state there is still all-mask with probability
    1 - 1e-6."""
    t_start = 1.0 if torch.isfinite(schedule.total(torch.tensor(1.0, dtype=torch.float64))) else 1.0 - 1e-6
    return torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64).tolist()


@torch.inference_mode()
def generate(
    net,
    objective,
    batch: int,
    length: int,
    spec: SampleSpec,
    *,
    clamp: torch.Tensor | None = None,
    clamp_values: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    keep_history: bool = False,
    progress=None,
) -> SampleResult:
    """Sample `batch` sequences of `length` tokens from a diffusion objective in `spec.steps` steps.

    Positions where `clamp` [batch, length] is True are held at `clamp_values`. `spec.allowed` ([V]
    bool) restricts what a position may become (e.g. residues only when infilling a protein): the
    scores of other tokens are set to zero, which conditions the reverse process on never choosing
    them. `spec.order` replaces the random unmasking of the absorbing process by a ranked one (see
    ordering.py).
    """
    if spec.order is not None and not isinstance(objective.process, Absorbing):
        raise ValueError("ordered unmasking needs the absorbing process")
    x = objective.process.prior_sample((batch, length), generator, device)
    if clamp is not None:
        x = torch.where(clamp, clamp_values, x)
    free = torch.ones_like(x, dtype=torch.bool) if clamp is None else ~clamp
    times = reverse_times(objective.schedule, spec.steps)
    cache_ok = spec.use_cache and not net.time_conditioned
    if cache_ok and spec.order is None and objective.time_separable and not keep_history:
        tokens, nfe = generate_clocked(net, objective, spec, x, free, times, generator, progress)
        return SampleResult(tokens=tokens, nfe=nfe)
    scores = CachedScores(net, objective, x.shape, spec, cache_ok, device)
    history = [x.clone()] if keep_history else None
    committed_score = torch.full(x.shape, torch.inf, device=device) if spec.order and spec.order.remask else None
    for i in range(spec.steps):
        active = ~objective.process.finished(x)
        if not active.any():
            break
        t, t_next = times[i], times[i + 1]
        s = scores(x, t, active)
        if spec.order is not None:
            new, committed_score = ordered_step(objective, spec.order, x, s, t_next, free, committed_score, generator)
        else:
            new = draw(step_probs(objective, spec.rule, x, s, t, t_next), generator)
        if clamp is not None:
            new = torch.where(clamp, clamp_values, new)
        new = torch.where(active[:, None], new, x)
        scores.forget((new != x).any(-1))
        x = new
        if keep_history:
            history.append(x.clone())
        if progress is not None:
            progress.update(1)
    return SampleResult(tokens=x, nfe=scores.nfe, history=history)


class CachedScores:
    """The scores s_y of each sequence at time t, from the network's output for that sequence.

    With `cache` (a network that ignores time), a sequence's output stays valid until the sequence
    changes, so it is reused (MDLM's caching); only the sequences without a valid output are
    evaluated. `nfe` counts the evaluations each sequence received.
    """

    def __init__(self, net, objective, shape: tuple[int, int], spec: SampleSpec, cache: bool, device):
        self.net, self.objective, self.spec, self.cache = net, objective, spec, cache
        batch, length = shape
        self.out = torch.zeros(batch, length, objective.vocab_size, device=device)
        self.fresh = torch.zeros(batch, dtype=torch.bool, device=device)  # out[b] is valid for the current x[b]
        self.nfe = torch.zeros(batch, dtype=torch.long, device=device)
        self.estimates = SelfConditioning(objective, shape, device)

    def __call__(self, x: torch.Tensor, t: float, active: torch.Tensor) -> torch.Tensor:
        sbar = self.objective.schedule.total(torch.tensor(t, dtype=torch.float64)).float().to(x.device)
        need = active & ~self.fresh if self.cache else active
        if need.any():
            idx = need.nonzero().squeeze(-1)
            self.out[idx] = self.estimates.evaluate(self.net, x[idx], sbar.expand(len(idx)), idx)
            self.nfe[idx] += 1
            self.fresh[idx] = True
        s = self.objective.log_score(self.out, x, sbar).exp()
        return self.spec.shape(s)

    def forget(self, changed: torch.Tensor) -> None:
        """The sequences in `changed` [B] moved: their outputs are stale."""
        self.fresh &= ~changed

    def select(self, rows: torch.Tensor) -> None:
        """Row i now holds the sequence that was row rows[i] (particles resampled): its output, freshness
        and self-conditioning estimate follow it; `nfe` stays with the row (the evaluations it paid for)."""
        self.out, self.fresh = self.out[rows], self.fresh[rows]
        if self.estimates.last is not None:
            self.estimates.last = self.estimates.last[rows]


class SelfConditioning:
    """Each sequence's last estimate of x0, fed to its next evaluation (zero before the first), for a
    self-conditioned objective; for any other, evaluation is just the network."""

    def __init__(self, objective, shape: tuple[int, int], device):
        self.objective = objective
        self.last = None
        if getattr(objective, "self_conditioning", False):
            self.last = torch.zeros(*shape, objective.vocab_size, device=device)

    def evaluate(self, net, x: torch.Tensor, sbar: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The network's output (float32) for the sequences `rows`, whose states are x; a network that
        `wants_rows` (a bd3lm block reading each sequence's prefix) is told which they are."""
        if getattr(net, "wants_rows", False):
            return net(x, sbar, rows=rows).float()
        if self.last is None:
            return net(x, sbar).float()
        out = self.objective.network(net, x, sbar, self.last[rows])
        self.last[rows] = self.objective.estimate(out, x)
        return out


def step_probs(objective, rule: StepRule, x, s, t: float, t_next: float) -> torch.Tensor:
    """The transition probabilities of one reverse step; the last step (t_next = 0) denoises."""
    if t_next == 0.0:
        return final_probs(objective.process, objective.schedule, x, s, t)
    return rule.probs(objective.process, objective.schedule, x, s, t, t_next)


def generate_clocked(
    net, objective, spec: SampleSpec, x, free, times: list[float], generator, progress=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached reverse process with one clock per sequence (absorbing process, time-separable scores).

    After an evaluation, a sequence's scores at step k are s_y(t_k) = r_y / expm1(sbar(t_k)), r the
    scores at time factor 1. Each masked free position unmasks at step k independently with probability
    min(1, w_k sum_y s_y(t_k)) (the step rule's weight w_k), and the last step (to t = 0) unmasks all
    that remain.
    The sequence draws these coins step after step on its own clock until some position unmasks; those
    positions take y with probability proportional to r_y, and the sequence waits for its next
    evaluation. Every waiting sequence is evaluated in one call, so a batch costs as many calls as its
    busiest sequence has unmasking events. Each sequence follows exactly the law of the step-by-step
    sampler; only the order in which random numbers are drawn differs.
    """
    process, schedule = objective.process, objective.schedule
    steps = len(times) - 1
    t = torch.tensor(times, dtype=torch.float64)
    sbar = schedule.total(t)
    weight = torch.full((steps,), torch.inf, dtype=torch.float64)  # the last step (to t = 0) takes all
    weight[:-1] = spec.rule.unmask_weight(schedule, t[:-2], t[1:-1]) / torch.expm1(sbar[:-2])
    weight = weight.to(x.device)
    unit_time = torch.tensor(math.log(2.0), device=x.device)  # expm1(sbar) = 1: the time factor is 1
    lookahead = 32  # steps of coins drawn at once; a sequence's next event is usually a few steps away
    estimates = SelfConditioning(objective, x.shape, x.device)
    clock = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # the next step each sequence takes
    nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    done_steps = 0
    while True:
        masked = (x == process.mask_id) & free
        rows = masked.any(-1).nonzero().squeeze(-1)
        if len(rows) == 0:
            break
        xs = x[rows]
        s = objective.log_score(estimates.evaluate(net, xs, unit_time.expand(len(rows)), rows), xs, unit_time).exp()
        s = spec.shape(s)
        nfe[rows] += 1
        rate = s.sum(-1).double() * masked[rows]  # [b, L]; zero where nothing can happen
        hit, waiting = torch.zeros_like(masked[rows]), torch.arange(len(rows), device=x.device)
        while len(waiting):  # walk each waiting sequence forward until one of its positions unmasks
            k = (clock[rows[waiting]][:, None] + torch.arange(lookahead, device=x.device)).clamp(max=steps - 1)
            p = (rate[waiting][:, :, None] * weight[k][:, None, :]).clamp(max=1.0)  # [b, L, lookahead]
            p = torch.where((k == steps - 1)[:, None, :] & masked[rows[waiting]][:, :, None], 1.0, p)
            coins = torch.rand(p.shape, generator=generator, device=x.device, dtype=torch.float64) < p
            any_hit = coins.any(1)  # [b, lookahead]
            found = any_hit.any(-1)
            first = any_hit.float().argmax(-1)  # the first step of the lookahead with an event
            event = waiting[found]
            hit[event] = coins[found, :, first[found]]
            clock[rows[event]] = k[found, first[found]] + 1
            clock[rows[waiting[~found]]] += lookahead
            waiting = waiting[~found]
        new = draw(s[hit], generator)
        xs[hit] = new
        x[rows] = xs
        if progress is not None:  # as far as the slowest unfinished clock
            left = ((x == process.mask_id) & free).any(-1)
            now = int(clock[left].min()) if left.any() else steps
            progress.update(max(0, now - done_steps))
            done_steps = max(done_steps, now)
    return x, nfe


def final_probs(process: Process, schedule: Schedule, xt, s, t: float) -> torch.Tensor:
    """Last step, from t to 0: a Tweedie step; for the absorbing process the mask is not an option, so
    a masked position draws y with probability proportional to s_y."""
    probs = TauLeaping().probs(process, schedule, xt, s, t, 0.0)
    if isinstance(process, Absorbing):
        masked = (xt == process.mask_id)[..., None]
        real = torch.cat([s, torch.zeros_like(s[..., :1])], dim=-1)
        probs = torch.where(masked, real, probs)
    return probs


def masked_fraction(schedule: Schedule, t: float) -> float:
    """m(t) = (1 - e^{-sbar(t)}) / (1 - e^{-sbar(1)}): the fraction of free positions masked at time t."""
    sbar = schedule.total(torch.tensor([t, 1.0], dtype=torch.float64))
    frac = -torch.expm1(-sbar)
    return (frac[0] / frac[1]).item()


def ordered_step(objective, order: OrderPolicy, x, s, t_next, free, committed_score, generator):
    """Commit the policy's best-ranked masked positions so that as many stay masked as the policy says
    (`OrderPolicy.keep_masked`: round(n_free * m(t_next)) unless it decodes by confidence)."""
    probs = s / s.sum(-1, keepdim=True).clamp(min=1e-30)
    candidates = draw(probs, generator)
    score = order.noisy_score(probs, generator)
    keep = order.keep_masked(probs, x == objective.process.mask_id, free, masked_fraction(objective.schedule, t_next))
    return commit_top(x, candidates, score, free, objective.process.mask_id, keep, committed_score)


def generate_semi_ar(window_sampler, batch: int, total_length: int, window: int, overlap: int, device="cpu"):
    """Grow sequences past the model's window: each new window is conditioned on the last `overlap`
    tokens of the previous one (MDLM's semi-autoregressive sampling). `window_sampler(clamp, values)`
    samples one window of `window` tokens."""
    if not 0 < overlap < window:
        raise ValueError(f"overlap must be between 1 and {window - 1}")
    result = window_sampler(None, None)
    tokens, nfe = result.tokens, result.nfe.clone()
    while tokens.shape[1] < total_length:
        clamp = torch.zeros(batch, window, dtype=torch.bool, device=device)
        clamp[:, :overlap] = True
        values = torch.zeros(batch, window, dtype=torch.long, device=device)
        values[:, :overlap] = tokens[:, -overlap:]
        result = window_sampler(clamp, values)
        tokens = torch.cat([tokens, result.tokens[:, overlap:]], dim=1)
        nfe += result.nfe
    return SampleResult(tokens=tokens[:, :total_length], nfe=nfe)


def draw_lengths(log_p: torch.Tensor, count: int, low: int, high: int, generator=None) -> torch.Tensor:
    """[count] record lengths n ~ p(n) restricted to low <= n <= high and renormalised (log_p[n - 1] = log p(n))."""
    n = torch.arange(1, len(log_p) + 1)
    probs = torch.where((n >= low) & (n <= high), log_p.detach().double().cpu().exp(), 0.0)
    return torch.multinomial(probs, count, replacement=True, generator=generator) + 1


def sample_many(net, objective, n: int, length: int, spec: SampleSpec, *, seed: int, device, amp=None, progress=None):
    """n sequences in batches of spec.batch_size, each drawn by the objective's own sampler
    (`objective.sample`), or by `spec.guide` when sampling is steered (its batches hold
    `guide.samples_per_batch` samples); returns (ids [n, L'], largest per-sample nfe, seconds)."""
    gen = torch.Generator(device).manual_seed(seed)
    chunks, nfe = [], 0
    start = time.perf_counter()
    net = low_precision_copy(net, amp)
    trims = not spec.semi_ar_length and padding_unseen(net, spec)
    if trims:  # records of like length share a batch, so each batch's window ends near its records
        order = torch.argsort(record_ends(spec), stable=True)
        spec = replace(spec, clamp=spec.clamp[order], clamp_values=spec.clamp_values[order])
    sampler = objective.sample if spec.guide is None else partial(spec.guide.sample, objective=objective)
    per_batch = spec.batch_size if spec.guide is None else spec.guide.samples_per_batch(spec.batch_size)
    for first in range(0, n, per_batch):
        b = min(per_batch, n - first)
        clamp, values = spec_clamp(spec, first, b, device)
        window = int(record_ends(spec, first, b).max()) if trims else length

        def sample_window(clamp, values, b=b, window=window):
            return sampler(net, b, window, spec, clamp=clamp, clamp_values=values, generator=gen, device=device)

        if spec.semi_ar_length:
            result = generate_semi_ar(sample_window, b, spec.semi_ar_length, length, length // 2, device)
        else:
            result = sample_window(*(None, None) if clamp is None else (clamp[:, :window], values[:, :window]))
        tokens = result.tokens if window == length else torch.cat([result.tokens, values[:, window:]], dim=1)
        chunks.append(tokens.cpu())
        nfe = max(nfe, int(result.nfe.max()))
        if progress is not None:
            progress.update(b)
    samples = torch.cat(chunks)
    if trims:
        samples = samples[torch.argsort(order)]
    return samples, nfe, time.perf_counter() - start


def padding_unseen(net, spec: SampleSpec) -> bool:
    """True when the samples' frames end in held padding (one frame per sequence) that the network never
    attends to (`cfg.pad_id`, a length-aware record layout): the window can then stop at a batch's
    longest record, and every output at a record's own positions is unchanged."""
    pad_id = getattr(getattr(net, "cfg", None), "pad_id", None)
    return pad_id is not None and spec.clamp is not None and spec.clamp.dim() == 2 and spec.pad_id == pad_id


def record_ends(spec: SampleSpec, first: int = 0, b: int | None = None) -> torch.Tensor:
    """[b] for the frames first .. first + b - 1: the position where each one's held padding begins
    (the window length its record needs)."""
    rows = slice(first, None if b is None else first + b)
    padding = spec.clamp[rows] & (spec.clamp_values[rows] == spec.pad_id)
    length = padding.shape[1]
    tail = padding.flip(1).long().cumprod(1).sum(1)  # held padding at the end of each frame
    return (length - tail).clamp(min=1)


def spec_clamp(spec: SampleSpec, first: int, b: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The clamp and values of sequences first .. first + b - 1: one template for all, or one row each."""
    if spec.clamp is None:
        return None, None
    if spec.clamp.dim() == 2:
        rows = slice(first, first + b)
        return spec.clamp[rows].to(device), spec.clamp_values[rows].to(device)
    return spec.clamp.expand(b, -1).to(device), spec.clamp_values.expand(b, -1).to(device)
