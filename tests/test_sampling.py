"""Samplers against the exact distribution of the toy model, and the guarantees users rely on."""

import itertools

import pytest
import torch
from toy import ExactAbsorbingNet, ExactUniformNet, ToyDistribution

from ddlm.networks import NetConfig, Transformer
from ddlm.objectives import MDLM, ScoreEntropy
from ddlm.processes import Absorbing, Uniform
from ddlm.sampling import Euler, SampleSpec, TauLeaping, final_probs, generate
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


def test_uniform_samples_match_exact_distribution():
    toy = ToyDistribution()
    objective = ScoreEntropy(Uniform(toy.V), Geometric())
    net = ExactUniformNet(toy)
    result = generate(
        net, objective, N, toy.L, SampleSpec(steps=128, rule=TauLeaping()), generator=torch.Generator().manual_seed(0)
    )
    assert total_variation(toy, result.tokens) < 0.035


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
