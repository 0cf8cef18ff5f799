"""The training loss is the negative ELBO: with the exact conditionals plugged in as the network,
its expectation equals the exact negative log-likelihood of each sequence."""

import math

import pytest
import torch
from toy import ExactAbsorbingNet, ExactUniformNet, ToyDistribution

from ddlm.objectives import MDLM, ScoreEntropy, stratified_times
from ddlm.processes import Absorbing, Uniform
from ddlm.schedules import Geometric, LogLinear


def expected_loss(objective, net, x0_row, n: int, seed: int = 0) -> tuple[float, float]:
    """Monte-Carlo mean of the per-sequence loss over n stratified times, and its standard error."""
    g = torch.Generator().manual_seed(seed)
    x0 = x0_row.expand(n, -1).clone()
    t = stratified_times(n, 0.0, g).double()
    losses = objective.loss(net, x0, t=t, generator=g).double()
    # the strata make this conservative: the iid formula over-estimates the variance
    return losses.mean().item(), losses.std().item() / math.sqrt(n)


@pytest.mark.parametrize("objective_cls,scale", [(ScoreEntropy, 3.0), (MDLM, 1.0)], ids=["sedd", "mdlm"])
def test_absorbing_loss_is_exact_nll_with_exact_conditionals(objective_cls, scale):
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    # eps = 0: masking probability runs over all of (0, 1), so no prior term is left over
    objective = objective_cls(process, LogLinear(eps=0.0))
    net = ExactAbsorbingNet(toy, process.mask_id, scale=scale)  # SEDD's optimum is o = log(V p)
    for row in [0, 5, 13, 26]:
        mean, se = expected_loss(objective, net, toy.seqs[row], n=40_000, seed=row)
        nll = -math.log(toy.p[row].item())
        assert abs(mean - nll) < 4 * se + 1e-3, (row, mean, nll, se)


def test_absorbing_sedd_loss_exceeds_nll_for_a_wrong_network():
    """The bound is strict away from the optimum: a uniform guess costs more than the true NLL."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = ScoreEntropy(process, LogLinear(eps=0.0))

    def uniform_net(xt, sbar=None):
        return torch.zeros(*xt.shape, toy.V, dtype=torch.float64)

    uniform_net.time_conditioned = False
    total_bound = 0.0
    for row in range(len(toy.seqs)):
        mean, _ = expected_loss(objective, uniform_net, toy.seqs[row], n=2000, seed=row)
        total_bound += toy.p[row].item() * mean
    entropy = -(toy.p * toy.p.log()).sum().item()
    assert total_bound > entropy + 0.05


def test_uniform_sedd_loss_is_exact_nll_with_exact_scores():
    """Deterministic check: the expectation over x_t is an exact sum over all 27 states, and the
    integral over total noise runs over all of [0, smax] (the schedule covers [smin, smax]; the short
    piece below smin, which a geometric schedule never reaches, is integrated in sbar directly)."""
    toy = ToyDistribution()
    schedule = Geometric()
    process = Uniform(toy.V)
    objective = ScoreEntropy(process, schedule)
    net = ExactUniformNet(toy)
    xt = toy.seqs  # every state

    def expected_integrand(x0, sbar, sigma):
        weight = process.transition_matrix(sbar.item())[xt, x0].prod(-1)  # q(x_t | x0) for every x_t
        out = net(xt, sbar.expand(len(xt)))
        per_seq = objective.position_loss(out, xt, x0, sbar.expand(len(xt), 1), sigma.expand(len(xt), 1))
        return (weight * per_seq.sum(-1)).sum().item()

    n = 2000
    mid = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for row in [0, 7, 20]:
        x0 = toy.seqs[row].expand_as(xt)
        total = sum(expected_integrand(x0, schedule.total(t), schedule.rate(t)) for t in mid) / n
        below = (
            sum(expected_integrand(x0, schedule.smin * u, torch.tensor(1.0)) for u in mid[::10])
            * schedule.smin
            / (n // 10)
        )
        nll = -math.log(toy.p[row].item())
        assert abs(total + below - nll) < 2e-4, (row, total, below, nll)


def test_stratified_times_cover_each_stratum_once():
    t = stratified_times(64, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal((t * 64).floor().long(), torch.arange(64))


@pytest.mark.parametrize("objective_cls,scale", [(ScoreEntropy, 3.0), (MDLM, 1.0)], ids=["sedd", "mdlm"])
def test_mask_count_form_is_exact_nll(objective_cls, scale):
    """Exact expectation by enumeration: every mask count k and every subset of k positions."""
    import itertools

    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = objective_cls(process, LogLinear())
    net = ExactAbsorbingNet(toy, process.mask_id, scale=scale)
    L = toy.L
    for row in [0, 11, 26]:
        x0 = toy.seqs[row][None]
        total = 0.0
        for k in range(1, L + 1):
            subsets = list(itertools.combinations(range(L), k))
            for subset in subsets:
                masked = torch.zeros(1, L, dtype=torch.bool)
                masked[0, list(subset)] = True
                value = objective.loss_at_mask_count(net, x0, masked=masked)
                total += value.item() / len(subsets) / L
        assert abs(total - (-math.log(toy.p[row].item()))) < 1e-6


def test_mask_count_sampler_masks_exactly_k():
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    seen = {}

    def spy(xt, sbar=None):
        seen["xt"] = xt.clone()
        return torch.zeros(*xt.shape, toy.V)

    spy.time_conditioned = False
    objective = MDLM(process, LogLinear())
    x0 = toy.seqs[torch.arange(27)]
    k = torch.randint(1, 4, (27,))
    objective.loss_at_mask_count(spy, x0, k, torch.Generator().manual_seed(0))
    assert torch.equal((seen["xt"] == process.mask_id).sum(-1), k)
    assert torch.equal(torch.where(seen["xt"] == process.mask_id, x0, seen["xt"]), x0)
