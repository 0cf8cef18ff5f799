"""Samplers against the exact distribution of the toy model, and the guarantees users rely on."""

import itertools
import math

import pytest
import torch
from toy import ExactAbsorbingNet, ExactUniformNet, ToyDistribution

from ddlm.networks import NetConfig, Transformer
from ddlm.objectives import MDLM, ScoreEntropy
from ddlm.processes import Absorbing, Uniform
from ddlm.sampling import Euler, SampleSpec, TauLeaping, final_probs, generate, reverse_times, step_probs
from ddlm.schedules import Geometric, LogLinear

N = 20_000
# Expected TV of an exact sampler's empirical histogram over 27 outcomes at n = 20k is about 0.015
# (sum_k sqrt(p_k / (2 pi n))); the bounds below leave room for that and the steps' discretisation.


def total_variation(toy: ToyDistribution, samples: torch.Tensor) -> float:
    counts = torch.bincount(toy.index(samples), minlength=len(toy.p)).double()
    return 0.5 * (counts / counts.sum() - toy.p).abs().sum().item()


@pytest.mark.parametrize(
    "objective_cls,scale,rule,steps,bound",
    [
        (ScoreEntropy, 3.0, TauLeaping(), 256, 0.03),
        (MDLM, 1.0, TauLeaping(), 256, 0.03),
        (ScoreEntropy, 3.0, Euler(), 512, 0.035),
        (MDLM, 1.0, TauLeaping(), 4, 0.10),  # few steps: unmasking several positions at once costs accuracy
    ],
    ids=["sedd-tau", "mdlm-tau", "sedd-euler", "mdlm-tau-4-steps"],
)
@pytest.mark.parametrize("use_cache", [True, False], ids=["clocked", "stepwise"])
def test_absorbing_samples_match_exact_distribution(objective_cls, scale, rule, steps, bound, use_cache):
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = objective_cls(process, LogLinear())
    net = ExactAbsorbingNet(toy, process.mask_id, scale)
    result = generate(
        net,
        objective,
        N,
        toy.L,
        SampleSpec(steps=steps, rule=rule, use_cache=use_cache),
        generator=torch.Generator().manual_seed(0),
    )
    assert not (result.tokens == process.mask_id).any()
    assert total_variation(toy, result.tokens) < bound


@pytest.mark.parametrize("steps,bound", [(256, 0.03), (4, 0.10)], ids=["256-steps", "4-steps"])
def test_tv_bounds_have_power_against_a_context_blind_model(steps, bound):
    """Each TV bound above fails for a model whose conditionals ignore the context (each position's
    marginal), sampled with the same number of steps: the statistic can tell a wrong sampler apart."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = MDLM(process, LogLinear())

    def marginal_net(xt, sbar=None):
        marg = toy.masked_conditionals(torch.full_like(xt, process.mask_id), process.mask_id)
        return marg.log()

    marginal_net.time_conditioned = False
    spec = SampleSpec(steps=steps, rule=TauLeaping())
    result = generate(marginal_net, objective, N, toy.L, spec, generator=torch.Generator().manual_seed(0))
    assert total_variation(toy, result.tokens) > bound


class TemperedNet(ExactAbsorbingNet):
    """The exact conditionals raised to a power and renormalised: a perturbed score (power < 1 too flat,
    > 1 too sharp); the total rate is the exact one's."""

    def __init__(self, toy: ToyDistribution, mask_id: int, scale: float, power: float):
        super().__init__(toy, mask_id, scale)
        self.power = power

    def forward(self, xt, sbar=None):
        p = self.toy.masked_conditionals(xt, self.mask_id) ** self.power
        return torch.log(p / p.sum(-1, keepdim=True)) + self.log_scale


@pytest.mark.parametrize("power", [0.6, 1.5], ids=["flat", "sharp"])
def test_euler_tv_bound_has_power_against_a_perturbed_score(power):
    """The Euler bound (512 steps, 20k samples, 0.035) fails for the exact conditionals raised to the
    power 0.6 or 1.5 (TV 0.077 and 0.085, their exact laws 0.071 and 0.083; 0.018 for the exact ones).
    A wrong Euler step weight is not such a variant: with exact conditionals, when a position unmasks
    hardly changes the law (a weight 4x too small still gives TV 0.023), only which token it becomes."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = ScoreEntropy(process, LogLinear())
    net = TemperedNet(toy, process.mask_id, 3.0, power)
    spec = SampleSpec(steps=512, rule=Euler())
    result = generate(net, objective, N, toy.L, spec, generator=torch.Generator().manual_seed(0))
    assert total_variation(toy, result.tokens) > 0.035


def sampler_law(objective, net, states: torch.Tensor, start: torch.Tensor, steps: int, rule) -> torch.Tensor:
    """[S] the exact law of `generate`'s state after `steps` reverse steps from the law `start` over the
    S states, each step's transition matrix the product over positions of the rule's per-position
    probabilities (`step_probs`, normalised as `draw` does), the network evaluated at every state."""
    law = start.clone()
    times = reverse_times(objective.schedule, steps)
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        sbar = objective.schedule.total(torch.tensor(t, dtype=torch.float64)).float()
        s = objective.log_score(net(states, sbar.expand(len(states))).float(), states, sbar).exp()
        probs = step_probs(objective, rule, states, s, t, t_next).double()
        probs = probs / probs.sum(-1, keepdim=True)
        move = torch.ones(len(states), len(states), dtype=torch.float64)
        for i in range(states.shape[1]):
            move = move * probs[:, i, states[:, i]]
        law = law @ move
    return law


def uniform_sampler_law(toy: ToyDistribution, rule, steps: int = 128) -> torch.Tensor:
    objective = ScoreEntropy(Uniform(toy.V), Geometric())
    start = torch.full((len(toy.seqs),), 1.0 / len(toy.seqs), dtype=torch.float64)  # the uniform prior
    return sampler_law(objective, ExactUniformNet(toy), toy.seqs, start, steps, rule)


def test_uniform_samples_match_exact_distribution():
    """20k samples are within TV 0.035 of p (0.013), and follow the sampler's own exact law (128 Tweedie steps,
    TV 0.0044 from p): chi-squared 22 against its 99.99% point 62, which ties the law to `generate`."""
    toy = ToyDistribution()
    objective = ScoreEntropy(Uniform(toy.V), Geometric())
    net = ExactUniformNet(toy)
    result = generate(
        net, objective, N, toy.L, SampleSpec(steps=128, rule=TauLeaping()), generator=torch.Generator().manual_seed(0)
    )
    assert total_variation(toy, result.tokens) < 0.035
    law = uniform_sampler_law(toy, TauLeaping())
    assert 0.5 * (law - toy.p).abs().sum() < 0.01
    counts = torch.bincount(toy.index(result.tokens), minlength=len(toy.p)).double()
    df = len(law) - 1
    assert ((counts - N * law) ** 2 / (N * law)).sum() < df + 5 * (2 * df) ** 0.5


class ScaledTweedie(TauLeaping):
    """Tweedie steps with a wrong step weight: d = sbar(t) - sbar(t_next) multiplied by `factor`."""

    def __init__(self, factor: float):
        self.factor = factor

    def probs(self, process, schedule, xt, s, t, t_next):
        t, t_next = torch.tensor(t, dtype=torch.float64), torch.tensor(t_next, dtype=torch.float64)
        d = schedule.total(t) - schedule.total(t_next)
        return process.tweedie_probs(xt, s, (self.factor * d).to(s.dtype))


@pytest.mark.parametrize("factor", [0.5, 2.0], ids=["halved", "doubled"])
def test_uniform_tv_bound_has_power_against_a_wrong_step_weight(factor):
    """The uniform bound fails with the same 20k samples when the Tweedie step weight is halved or doubled:
    the sampler's exact law is then TV 0.062 or 0.054 from p (0.0044 with the right weight). An
    empirical TV has mean at least its law's (convexity) and moves by at most 1/N per sample, so it
    falls below the law's TV minus e with probability at most exp(-2 N e^2): with e =
    sqrt(log(1e6) / 2N) = 0.019, a law beyond 0.035 + e fails the bound but once in a million runs.
    (A weight 20-30% off, TV 0.024-0.035, would pass it: the bound leaves room for 20k samples' noise.)"""
    toy = ToyDistribution()
    law = uniform_sampler_law(toy, ScaledTweedie(factor))
    assert abs(law.sum().item() - 1) < 1e-9
    assert 0.5 * (law - toy.p).abs().sum() > 0.035 + math.sqrt(math.log(1e6) / (2 * N))


def tiny_net(seed: int = 0, time_conditioning: bool = False) -> Transformer:
    torch.manual_seed(seed)
    net = Transformer(
        NetConfig(
            vocab_in=6, vocab_out=5, max_len=16, d_model=32, n_layers=2, n_heads=2, time_conditioning=time_conditioning
        )
    )
    for p in net.parameters():  # a random, non-trivial model (the zero head would be uniform)
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def test_stepwise_cache_reuses_exact_outputs_and_bounds_nfe():
    """Step by step (as when the history is kept), the cache only skips calls whose output is known, so
    it reproduces the uncached run draw for draw."""
    net = tiny_net()
    objective = ScoreEntropy(Absorbing(5), LogLinear())
    L, steps = 16, 1024

    def run(cache):
        g = torch.Generator().manual_seed(3)
        return generate(
            net,
            objective,
            8,
            L,
            SampleSpec(steps=steps, rule=TauLeaping(), use_cache=cache),
            generator=g,
            keep_history=True,
        )

    cached, uncached = run(True), run(False)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.nfe.max() <= L  # each evaluation is followed by at least one unmasking
    assert uncached.nfe.min() > L + 1  # without the cache every step costs an evaluation


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
@pytest.mark.parametrize("cache", [True, False], ids=["clocked", "stepwise"])
def test_steps_take_at_most_as_many_network_calls(steps, cache):
    """The last step goes to t = 0 and unmasks every position left, whatever the network's total rate
    (a SEDD network's learned score sum, here random), so no call is spent after the last step."""
    objective = ScoreEntropy(Absorbing(5), LogLinear())
    result = generate(
        tiny_net(),
        objective,
        16,
        12,
        SampleSpec(steps=steps, use_cache=cache),
        generator=torch.Generator().manual_seed(5),
    )
    assert int(result.nfe.max()) <= steps
    assert not (result.tokens == objective.process.mask_id).any()


class CountingNet(torch.nn.Module):
    """Wraps a network and records the batch size of every call."""

    time_conditioned = False

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, sbar=None):
        self.calls.append(x.shape[0])
        return self.net(x, sbar)


@pytest.mark.parametrize("rule", [TauLeaping(), Euler()], ids=["tau", "euler"])
def test_clocked_sampler_batches_every_waiting_sequence_into_one_call(rule):
    """Each call evaluates every sequence that still has masks, so a batch costs as many calls as its
    busiest sequence has unmasking events (the first call: all of them)."""
    net = CountingNet(tiny_net())
    objective = MDLM(Absorbing(5), LogLinear())
    B, L = 8, 16
    result = generate(
        net, objective, B, L, SampleSpec(steps=1024, rule=rule), generator=torch.Generator().manual_seed(4)
    )
    assert len(net.calls) == int(result.nfe.max()) <= L
    assert net.calls[0] == B and sum(net.calls) == int(result.nfe.sum())
    assert net.calls == sorted(net.calls, reverse=True)  # finished sequences drop out, none come back


def test_time_conditioned_network_is_never_cached():
    net = tiny_net(time_conditioning=True)
    objective = ScoreEntropy(Absorbing(5), LogLinear())
    result = generate(
        net, objective, 4, 16, SampleSpec(steps=64, rule=TauLeaping()), generator=torch.Generator().manual_seed(0)
    )
    assert result.nfe.max() > 17


@pytest.mark.parametrize("rule", [TauLeaping(), Euler()], ids=["tau", "euler"])
@pytest.mark.parametrize("steps", [1, 7, 100])
@pytest.mark.parametrize("clocked", [True, False], ids=["clocked", "stepwise-with-history"])
def test_no_mask_survives_clamps_hold_and_only_allowed_tokens_appear(rule, steps, clocked):
    net = tiny_net(1)
    process = Absorbing(5)
    objective = ScoreEntropy(process, LogLinear())
    B, L = 16, 16
    g = torch.Generator().manual_seed(1)
    clamp = torch.rand(B, L, generator=g) < 0.3
    values = torch.randint(0, 5, (B, L), generator=g)
    allowed = torch.tensor([False, True, True, False, True])
    result = generate(
        net,
        objective,
        B,
        L,
        SampleSpec(steps=steps, rule=rule, allowed=allowed),
        clamp=clamp,
        clamp_values=values,
        generator=g,
        keep_history=not clocked,
    )  # the history needs the step-by-step path
    assert not (result.tokens == process.mask_id).any()
    assert allowed[result.tokens[~clamp]].all()
    for state in result.history or [result.tokens]:
        assert torch.equal(state[clamp], values[clamp])


def test_same_seed_same_samples_different_seed_different_samples():
    net = tiny_net(2)
    objective = MDLM(Absorbing(5), LogLinear())

    def run(seed):
        return generate(
            net,
            objective,
            8,
            16,
            SampleSpec(steps=32, rule=TauLeaping()),
            generator=torch.Generator().manual_seed(seed),
        ).tokens

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def stepwise_law(net, objective, rule, steps: int, L: int, clamp=None, values=None, allowed=None) -> torch.Tensor:
    """The exact law of the step-by-step sampler, by pushing a distribution over all (V + 1)^L states
    through each step's transition matrix (the product of the per-position step probabilities)."""
    process, schedule = objective.process, objective.schedule
    V = objective.vocab_size
    states = torch.tensor(list(itertools.product(range(V + 1), repeat=L)))
    start = torch.full((L,), process.mask_id)
    if clamp is not None:
        start = torch.where(clamp, values, start)
    dist = (states == start).all(-1).double()
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for i in range(steps):  # the last step, to t = 0, denoises
        t, final = times[i], i == steps - 1
        s = objective.log_score(net(states).double(), states, schedule.total(torch.tensor(t, dtype=torch.float64)))
        s = s.exp() if allowed is None else s.exp() * allowed
        if final:
            P = final_probs(process, schedule, states, s, t)
        else:
            P = rule.probs(process, schedule, states, s, t, times[i + 1])
        P = P / P.sum(-1, keepdim=True)  # [N, L, V + 1]
        if clamp is not None:  # clamped positions stay put
            P = torch.where(clamp[None, :, None], torch.nn.functional.one_hot(states, V + 1).double(), P)
        T = torch.ones(len(states), len(states), dtype=torch.float64)
        for j in range(L):
            T = T * P[:, j, :][:, states[:, j]]
        dist = dist @ T
    return dist, states


@pytest.mark.parametrize(
    "objective_cls,scale,rule,steps,constrained",
    [
        (MDLM, 1.0, TauLeaping(), 2, False),
        (ScoreEntropy, 3.0, TauLeaping(), 5, False),
        (ScoreEntropy, 2.0, Euler(), 3, False),
        (MDLM, 1.0, Euler(), 40, False),  # crosses a window of coins
        (MDLM, 1.0, TauLeaping(), 2, True),
        (ScoreEntropy, 3.0, TauLeaping(), 33, True),
    ],
    ids=["mdlm-tau-2", "sedd-tau-5", "sedd-euler-3", "mdlm-euler-40", "mdlm-tau-2-clamped", "sedd-tau-33-clamped"],
)
def test_clocked_sampler_follows_the_stepwise_law_exactly(objective_cls, scale, rule, steps, constrained):
    """Not just close to the data: equal to the step-by-step sampler's own law at few steps, where an
    off-by-one in the clocks would show (chi-squared over every reachable state, n = 50,000)."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = objective_cls(process, LogLinear())
    net = ExactAbsorbingNet(toy, process.mask_id, scale)
    clamp = values = allowed = None
    if constrained:
        clamp, values = torch.tensor([False, True, False]), torch.tensor([0, 2, 0])
        allowed = torch.tensor([True, False, True])
    law, states = stepwise_law(net, objective, rule, steps, toy.L, clamp, values, allowed)
    n = 50_000
    kwargs = {} if clamp is None else dict(clamp=clamp.expand(n, -1), clamp_values=values.expand(n, -1))
    result = generate(
        net,
        objective,
        n,
        toy.L,
        SampleSpec(steps=steps, rule=rule, allowed=allowed),
        generator=torch.Generator().manual_seed(7),
        **kwargs,
    )
    base = (toy.V + 1) ** torch.arange(toy.L - 1, -1, -1)
    counts = torch.bincount((result.tokens * base).sum(-1), minlength=len(states)).double()
    expected = law * n
    assert counts[expected == 0].sum() == 0  # nothing the stepwise sampler cannot reach
    reachable = expected > 0
    chi2 = ((counts - expected)[reachable] ** 2 / expected[reachable]).sum().item()
    df = int(reachable.sum()) - 1
    assert chi2 < df + 5 * (2 * df) ** 0.5  # about the 99.99% point of chi-squared with df degrees
