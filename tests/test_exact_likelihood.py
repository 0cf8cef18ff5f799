"""The exact likelihood of masked diffusion under a deterministic unmasking order (evaluate/exact.py),
checked by enumeration on the toy: it is a distribution, it is the law the ordered sampler draws from,
and with the exact conditionals and one position per step it is the data's own law."""

import pytest
import torch
from toy import ExactAbsorbingNet, ToyDistribution

from ddlm.errors import UserError
from ddlm.evaluate.exact import check_policy, ordered_log_likelihood
from ddlm.objectives import MDLM, ScoreEntropy
from ddlm.ordering import ORDERS
from ddlm.processes import Absorbing, Uniform
from ddlm.sampling import SampleSpec, generate
from ddlm.schedules import Geometric, LogLinear


class TiltedNet(ExactAbsorbingNet):
    """The exact conditionals bent by a fixed position-and-token tilt: a model that is not the data."""

    def forward(self, xt, sbar=None):
        tilt = torch.tensor([[0.0, 0.9, -0.6], [0.5, -0.4, 0.0], [-0.8, 0.0, 0.7]], dtype=torch.float64)
        return torch.log_softmax(super().forward(xt, sbar) + tilt[: xt.shape[1]], -1)


def law(net, objective, toy, order, steps) -> torch.Tensor:
    return ordered_log_likelihood(net, objective, toy.seqs, order, steps).exp()


@pytest.mark.parametrize("order_name", ["top-prob", "top-margin", "confidence"])
def test_exact_conditionals_one_per_step_give_the_data_law(order_name):
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    net = ExactAbsorbingNet(toy, process.mask_id, 1.0)
    p = law(net, MDLM(process, LogLinear()), toy, ORDERS[order_name](), steps=toy.L)
    assert torch.allclose(p, toy.p, atol=1e-6)


@pytest.mark.parametrize("objective_cls, scale", [(MDLM, 1.0), (ScoreEntropy, 3.0)])
@pytest.mark.parametrize("order_name, steps", [("top-prob", 3), ("top-margin", 2), ("confidence", 2)])
def test_the_exact_likelihood_is_the_ordered_samplers_law(objective_cls, scale, order_name, steps):
    """A model that is not the data, positions committed in pairs at some steps: the figure still sums to
    1 over every sequence and matches the sampler's frequencies (TV within sampling noise), and it is not
    the data's law (the check can fail)."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = objective_cls(process, LogLinear())
    net = TiltedNet(toy, process.mask_id, scale)
    order = ORDERS[order_name]()
    p = law(net, objective, toy, order, steps)
    assert abs(p.sum().item() - 1) < 1e-6
    n = 40_000
    spec = SampleSpec(steps=steps, order=order)
    tokens = generate(net, objective, n, toy.L, spec, generator=torch.Generator().manual_seed(0)).tokens
    freq = torch.bincount(toy.index(tokens), minlength=len(p)).double() / n
    assert 0.5 * (freq - p).abs().sum() < 0.02  # 27 cells, 40,000 draws: the noise is about 0.01
    assert 0.5 * (p - toy.p).abs().sum() > 0.05


def test_pairs_per_step_are_not_the_chain_rule():
    """Two positions committed at one step are drawn independently: with exact conditionals the law then
    differs from the data's (the figure is the sampler's, not an idealised one)."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    net = ExactAbsorbingNet(toy, process.mask_id, 1.0)
    p = law(net, MDLM(process, LogLinear()), toy, ORDERS["top-prob"](), steps=1)
    assert abs(p.sum().item() - 1) < 1e-6 and 0.5 * (p - toy.p).abs().sum() > 0.05


def test_policies_that_are_not_deterministic_are_refused():
    process = Absorbing(3)
    for order in (ORDERS["random"](), ORDERS["top-prob"](noise=1.0), ORDERS["top-prob"](remask=True)):
        with pytest.raises(UserError, match="must be deterministic"):
            check_policy(MDLM(process, LogLinear()), order)
    with pytest.raises(UserError, match="absorbing"):
        check_policy(ScoreEntropy(Uniform(3), Geometric()), ORDERS["top-prob"]())
