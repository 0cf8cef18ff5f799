"""Reverse-process samplers for the diffusion objectives.

`generate` runs the reverse process from t = 1 to t_end and then denoises once more, so a finished
absorbing sample never contains the mask. Each step asks the step rule (`TauLeaping`, `Euler`) for
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
from dataclasses import dataclass, field

import torch

from .objectives import AutoRegressive, DiffusionObjective
from .ordering import OrderPolicy, commit_top, masked_target
from .processes import Absorbing, Process
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


STEP_RULES: dict[str, type[StepRule]] = {"tau-leaping": TauLeaping, "euler": Euler}


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


@torch.inference_mode()
def generate(
    net,
    objective: DiffusionObjective,
    rule: StepRule,
    batch: int,
    length: int,
    steps: int,
    *,
    clamp: torch.Tensor | None = None,
    clamp_values: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    order: OrderPolicy | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    t_end: float = 1e-5,
    device: torch.device | str = "cpu",
    keep_history: bool = False,
    progress=None,
) -> SampleResult:
    """Sample `batch` sequences of `length` tokens.

    Positions where `clamp` is True are held at `clamp_values`. `allowed` ([V] bool) restricts what a
    position may become (e.g. residues only when infilling a protein): the scores of other tokens are
    set to zero, which conditions the reverse process on never choosing them. `order` replaces the
    random unmasking of the absorbing process by a ranked one (see ordering.py).
    """
    if order is not None and not isinstance(objective.process, Absorbing):
        raise ValueError("ordered unmasking needs the absorbing process")
    process, schedule = objective.process, objective.schedule
    x = process.prior_sample((batch, length), generator, device)
    if clamp is not None:
        x = torch.where(clamp, clamp_values, x)
    cache_ok = use_cache and not net.time_conditioned
    free = torch.ones_like(x, dtype=torch.bool) if clamp is None else ~clamp
    # A schedule with sbar(1) = inf (all masked at t = 1, as D3PM's absorbing one) starts just below 1,
    # where the total noise is finite; the state there is still all-mask with probability 1 - 1e-6.
    t_start = 1.0 if torch.isfinite(schedule.total(torch.tensor(1.0, dtype=torch.float64))) else 1.0 - 1e-6
    times = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
    if cache_ok and order is None and objective.time_separable and not keep_history:
        tokens, nfe = generate_clocked(net, objective, rule, x, free, times, allowed, generator, progress)
        return SampleResult(tokens=tokens, nfe=nfe)
    out = torch.zeros(batch, length, objective.vocab_size, device=device)
    fresh = torch.zeros(batch, dtype=torch.bool, device=device)  # out[b] is valid for the current x[b]
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    history = [x.clone()] if keep_history else None
    committed_score = torch.full(x.shape, torch.inf, device=device) if order is not None and order.remask else None

    def evaluate(t: float, active: torch.Tensor) -> torch.Tensor:
        sbar = schedule.total(torch.tensor(t, dtype=torch.float64)).float()
        need = active & ~fresh if cache_ok else active
        if need.any():
            idx = need.nonzero().squeeze(-1)
            out[idx] = net(x[idx], sbar.expand(len(idx)).to(device)).float()
            nfe[idx] += 1
            fresh[idx] = True
        s = objective.log_score(out, x, sbar.to(device)).exp()
        return s if allowed is None else s * allowed.to(s)

    for i in range(steps + 1):
        active = ~process.finished(x)
        if not active.any():
            break
        final = i == steps
        t = times[i]
        t_next = 0.0 if final else times[i + 1]
        s = evaluate(t, active)
        if order is not None and not final:
            new, committed_score = ordered_step(
                process, schedule, order, x, s, t_next, free, committed_score, generator
            )
        else:
            probs = final_probs(process, schedule, x, s, t) if final else rule.probs(process, schedule, x, s, t, t_next)
            new = draw(probs, generator)
        if clamp is not None:
            new = torch.where(clamp, clamp_values, new)
        new = torch.where(active[:, None], new, x)
        fresh &= ~(new != x).any(-1)
        x = new
        if keep_history:
            history.append(x.clone())
        if progress is not None:
            progress.update(1)
    return SampleResult(tokens=x, nfe=nfe, history=history)


def generate_clocked(
    net, objective: DiffusionObjective, rule: StepRule, x, free, times: list[float], allowed, generator, progress=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached reverse process with one clock per sequence (absorbing process, time-separable scores).

    After an evaluation, a sequence's scores at step k are s_y(t_k) = r_y / expm1(sbar(t_k)), r the
    scores at time factor 1. Each masked free position unmasks at step k independently with probability
    min(1, w_k sum_y s_y(t_k)) (the step rule's weight w_k), and the last step unmasks all that remain.
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
    weight = torch.full((steps + 1,), torch.inf, dtype=torch.float64)  # the last step (to t = 0) takes all
    weight[:steps] = rule.unmask_weight(schedule, t[:-1], t[1:]) / torch.expm1(sbar[:-1])
    weight = weight.to(x.device)
    unit_time = torch.tensor(math.log(2.0), device=x.device)  # expm1(sbar) = 1: the time factor is 1
    window = 32  # steps of coins drawn at once; a sequence's next event is usually a few steps away
    clock = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # the next step each sequence takes
    nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    done_steps = 0
    while True:
        masked = (x == process.mask_id) & free
        rows = masked.any(-1).nonzero().squeeze(-1)
        if len(rows) == 0:
            break
        xs = x[rows]
        s = objective.log_score(net(xs, unit_time.expand(len(rows))).float(), xs, unit_time).exp()
        if allowed is not None:
            s = s * allowed.to(s)
        nfe[rows] += 1
        rate = s.sum(-1).double() * masked[rows]  # [b, L]; zero where nothing can happen
        hit, waiting = torch.zeros_like(masked[rows]), torch.arange(len(rows), device=x.device)
        while len(waiting):  # walk each waiting sequence forward until one of its positions unmasks
            k = (clock[rows[waiting]][:, None] + torch.arange(window, device=x.device)).clamp(max=steps)
            p = (rate[waiting][:, :, None] * weight[k][:, None, :]).clamp(max=1.0)  # [b, L, window]
            p = torch.where((k == steps)[:, None, :] & masked[rows[waiting]][:, :, None], 1.0, p)
            coins = torch.rand(p.shape, generator=generator, device=x.device, dtype=torch.float64) < p
            any_hit = coins.any(1)  # [b, window]
            found = any_hit.any(-1)
            first = any_hit.float().argmax(-1)  # the first step in the window with an event
            event = waiting[found]
            hit[event] = coins[found, :, first[found]]
            clock[rows[event]] = k[found, first[found]] + 1
            clock[rows[waiting[~found]]] += window
            waiting = waiting[~found]
        new = draw(s[hit], generator)
        xs[hit] = new
        x[rows] = xs
        if progress is not None:  # as far as the slowest unfinished clock
            left = ((x == process.mask_id) & free).any(-1)
            now = int(clock[left].min()) if left.any() else steps + 1
            progress.update(max(0, now - done_steps))
            done_steps = max(done_steps, now)
    return x, nfe


def final_probs(process: Process, schedule: Schedule, xt, s, t_end: float) -> torch.Tensor:
    """Last step from t_end to 0: a Tweedie step; for the absorbing process the mask is not an option,
    so a masked position draws y with probability proportional to s_y."""
    probs = TauLeaping().probs(process, schedule, xt, s, t_end, 0.0)
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


def ordered_step(process, schedule, order: OrderPolicy, x, s, t_next, free, committed_score, generator):
    """Commit the policy's best-ranked masked positions so round(n_free * m(t_next)) stay masked."""
    probs = s / s.sum(-1, keepdim=True).clamp(min=1e-30)
    candidates = draw(probs, generator)
    score = order.noisy_score(probs, generator)
    keep = masked_target(free.sum(-1), masked_fraction(schedule, t_next))
    return commit_top(x, candidates, score, free, process.mask_id, keep, committed_score)


@torch.inference_mode()
def generate_ar(
    net,
    objective: AutoRegressive,
    batch: int,
    length: int,
    *,
    clamp: torch.Tensor | None = None,
    clamp_values: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    device: torch.device | str = "cpu",
) -> SampleResult:
    """Left-to-right sampling with a key/value cache (one new token per network call).

    A clamped position is forced to its value; the model conditions on it only from then on, so an
    AR model is conditioned by a prefix, not by later positions.
    """
    x = torch.empty(batch, length, dtype=torch.long, device=device)
    inputs = torch.full((batch, 1), objective.start_id, dtype=torch.long, device=device)
    caches = [{} for _ in net.blocks] if use_cache else None
    for i in range(length):
        if use_cache:
            logits = net(inputs[:, -1:], kv_caches=caches, start=i)[:, -1]
        else:
            logits = net(inputs)[:, -1]
        probs = torch.softmax(logits.float(), dim=-1)
        if allowed is not None:
            probs = probs * allowed.to(probs)
        token = draw(probs, generator)
        if clamp is not None:
            token = torch.where(clamp[:, i], clamp_values[:, i], token)
        x[:, i] = token
        inputs = torch.cat([inputs, token[:, None]], dim=1)
    return SampleResult(tokens=x, nfe=torch.full((batch,), length, device=device))


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


def low_precision_copy(net, dtype: torch.dtype | None):
    """The network with its weights cast once to `dtype` (bf16) for inference, or itself for fp32.

    Autocast re-casts every weight at every call; with the cache's small sub-batches that cast is a
    third of the cost of a forward pass on a CPU. The logits are returned in float32 either way.
    """
    if dtype is None:
        return net
    import copy

    return copy.deepcopy(net).to(dtype)


@dataclass
class SampleSpec:
    """Everything that shapes sampling besides the model: steps, step rule, order, conditioning."""

    steps: int = 128
    rule: StepRule = field(default_factory=TauLeaping)
    use_cache: bool = True
    order: OrderPolicy | None = None
    clamp: torch.Tensor | None = None  # [L] bool, the same for every sequence, or [n, L], one per sequence
    clamp_values: torch.Tensor | None = None  # [L] or [n, L]
    allowed: torch.Tensor | None = None  # [V] bool
    semi_ar_length: int | None = None  # grow past the window to this many tokens
    batch_size: int = 64


def sample_many(net, objective, n: int, length: int, spec: SampleSpec, *, seed: int, device, amp=None, progress=None):
    """n sequences in batches of spec.batch_size; returns (ids [n, L'], largest per-sequence nfe, seconds).

    Dispatches on the objective: left-to-right for AR, the reverse diffusion otherwise."""
    gen = torch.Generator(device).manual_seed(seed)
    chunks, nfe = [], 0
    start = time.perf_counter()
    net = low_precision_copy(net, amp)
    for first in range(0, n, spec.batch_size):
        b = min(spec.batch_size, n - first)

        def window(clamp, values, b=b, first=first):
            if clamp is None and spec.clamp is not None:  # one template for all, or one row per sequence
                rows = slice(first, first + b)
                clamp = (spec.clamp[rows] if spec.clamp.dim() == 2 else spec.clamp.expand(b, -1)).to(device)
                values = spec.clamp_values[rows] if spec.clamp.dim() == 2 else spec.clamp_values.expand(b, -1)
                values = values.to(device)
            from .block_diffusion import BlockDiffusion, generate_blocks  # lazy: that module builds on this one

            common = dict(
                clamp=clamp,
                clamp_values=values,
                allowed=spec.allowed,
                generator=gen,
                use_cache=spec.use_cache,
                device=device,
            )
            if isinstance(objective, AutoRegressive):
                return generate_ar(net, objective, b, length, **common)
            diffusion = generate_blocks if isinstance(objective, BlockDiffusion) else generate
            return diffusion(net, objective, spec.rule, b, length, spec.steps, order=spec.order, **common)

        if spec.semi_ar_length:
            result = generate_semi_ar(window, b, spec.semi_ar_length, length, length // 2, device)
        else:
            result = window(None, None)
        chunks.append(result.tokens.cpu())
        nfe = max(nfe, int(result.nfe.max()))
        if progress is not None:
            progress.update(b)
    return torch.cat(chunks), nfe, time.perf_counter() - start
