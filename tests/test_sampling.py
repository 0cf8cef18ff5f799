"""Samplers against the exact distribution of the toy model, and the guarantees users rely on."""

import pytest
import torch
from toy import ExactAbsorbingNet, ExactUniformNet, ToyDistribution

from ddlm.networks import NetConfig, Transformer
from ddlm.objectives import MDLM, ScoreEntropy
from ddlm.processes import Absorbing, Uniform
from ddlm.sampling import Euler, TauLeaping, generate
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
def test_absorbing_samples_match_exact_distribution(objective_cls, scale, rule, steps, bound):
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = objective_cls(process, LogLinear())
    net = ExactAbsorbingNet(toy, process.mask_id, scale)
    result = generate(net, objective, rule, N, toy.L, steps, generator=torch.Generator().manual_seed(0))
    assert not (result.tokens == process.mask_id).any()
    assert total_variation(toy, result.tokens) < bound


def test_four_step_sampler_is_detectably_wrong_with_a_biased_model():
    """The TV statistic has power: a model whose conditionals ignore the context is far off."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = MDLM(process, LogLinear())

    def marginal_net(xt, sbar=None):
        marg = toy.masked_conditionals(torch.full_like(xt, process.mask_id), process.mask_id)
        return marg.log()

    marginal_net.time_conditioned = False
    result = generate(marginal_net, objective, TauLeaping(), N, toy.L, 64, generator=torch.Generator().manual_seed(0))
    assert total_variation(toy, result.tokens) > 0.06


def test_uniform_samples_match_exact_distribution():
    toy = ToyDistribution()
    objective = ScoreEntropy(Uniform(toy.V), Geometric())
    net = ExactUniformNet(toy)
    result = generate(net, objective, TauLeaping(), N, toy.L, 128, generator=torch.Generator().manual_seed(0))
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


def test_cached_and_uncached_sampling_agree_and_cache_bounds_nfe():
    net = tiny_net()
    objective = ScoreEntropy(Absorbing(5), LogLinear())
    L, steps = 16, 1024
    runs = {
        cache: generate(
            net, objective, TauLeaping(), 8, L, steps, generator=torch.Generator().manual_seed(3), use_cache=cache
        )
        for cache in (True, False)
    }
    assert torch.equal(runs[True].tokens, runs[False].tokens)
    assert runs[True].nfe.max() <= L + 1
    assert runs[False].nfe.min() > L + 1  # without the cache every step costs an evaluation


def test_time_conditioned_network_is_never_cached():
    net = tiny_net(time_conditioning=True)
    objective = ScoreEntropy(Absorbing(5), LogLinear())
    result = generate(net, objective, TauLeaping(), 4, 16, 64, generator=torch.Generator().manual_seed(0))
    assert result.nfe.max() > 17


@pytest.mark.parametrize("rule", [TauLeaping(), Euler()], ids=["tau", "euler"])
@pytest.mark.parametrize("steps", [1, 7, 100])
def test_no_mask_survives_and_clamped_positions_never_change(rule, steps):
    net = tiny_net(1)
    process = Absorbing(5)
    objective = ScoreEntropy(process, LogLinear())
    B, L = 16, 16
    g = torch.Generator().manual_seed(1)
    clamp = torch.rand(B, L, generator=g) < 0.3
    values = torch.randint(0, 5, (B, L), generator=g)
    result = generate(
        net, objective, rule, B, L, steps, clamp=clamp, clamp_values=values, generator=g, keep_history=True
    )
    assert not (result.tokens == process.mask_id).any()
    for state in result.history:
        assert torch.equal(state[clamp], values[clamp])


def test_same_seed_same_samples_different_seed_different_samples():
    net = tiny_net(2)
    objective = MDLM(Absorbing(5), LogLinear())

    def run(seed):
        return generate(net, objective, TauLeaping(), 8, 16, 32, generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
