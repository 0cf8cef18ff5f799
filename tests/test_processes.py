import pytest
import torch

from ddlm.processes import Absorbing, Uniform
from ddlm.schedules import Geometric, LogLinear


@pytest.mark.parametrize("process", [Absorbing(5), Uniform(5)], ids=["absorbing", "uniform"])
@pytest.mark.parametrize("sbar", [1e-4, 0.3, 2.0, 9.0])
def test_closed_form_transition_equals_matrix_exp(process, sbar):
    expected = torch.matrix_exp(sbar * process.rate_matrix())
    torch.testing.assert_close(process.transition_matrix(sbar), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("process", [Absorbing(4), Uniform(4)], ids=["absorbing", "uniform"])
def test_perturb_frequencies_match_transition(process):
    g = torch.Generator().manual_seed(0)
    sbar = 0.7
    x0 = torch.full((200_000,), 2)
    xt = process.perturb(x0, torch.tensor(sbar), g)
    freq = torch.bincount(xt, minlength=process.num_states).double() / len(xt)
    expected = process.transition_matrix(sbar)[:, 2]
    # 5 standard errors of a binomial proportion at n = 200k
    assert torch.allclose(freq, expected, atol=5 * (0.25 / 200_000) ** 0.5)


@pytest.mark.parametrize("process", [Absorbing(4), Uniform(4)], ids=["absorbing", "uniform"])
def test_tweedie_probs_equal_matrix_formula(process):
    """P(x_s = y) ~ [exp(-d Q) s]_y exp(d Q)[x_t, y], with both exponentials from torch.matrix_exp."""
    g = torch.Generator().manual_seed(1)
    V, S = process.vocab_size, process.num_states
    d = 0.37
    xt = torch.arange(S)  # every current state once
    s = torch.rand(S, V, generator=g, dtype=torch.float64) * 0.5
    got = process.tweedie_probs(xt, s, torch.tensor(d, dtype=torch.float64))
    Q = process.rate_matrix()
    back, fwd = torch.matrix_exp(-d * Q), torch.matrix_exp(d * Q)
    for row, x in enumerate(xt.tolist()):
        full = torch.ones(S, dtype=torch.float64)
        full[:V] = s[row]
        full[x] = 1.0  # the ratio of the current state to itself
        if isinstance(process, Absorbing) and x != process.mask_id:
            continue  # an unmasked position never moves; checked below
        expected = (back @ full) * fwd[x, :]
        expected = expected.clamp(min=0)
        expected = expected / expected.sum()
        torch.testing.assert_close(got[row] / got[row].sum(), expected, rtol=1e-9, atol=1e-12)
    if isinstance(process, Absorbing):
        for x in range(V):
            assert got[x, x] == 1 and got[x].sum() == 1


@pytest.mark.parametrize("schedule", [LogLinear(1e-3), LogLinear(0.0), Geometric()])
def test_rate_is_derivative_of_total(schedule):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(schedule.total(t).sum(), t)
    torch.testing.assert_close(schedule.rate(t), grad)


def test_loglinear_masking_probability_is_linear():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(-torch.expm1(-LogLinear(1e-3).total(t)), (1 - 1e-3) * t)


@pytest.mark.parametrize("process", [Absorbing(4), Uniform(4)], ids=["absorbing", "uniform"])
def test_transition_row_and_apply_match_dense_matrix(process):
    sbar = 0.8
    P = torch.matrix_exp(sbar * process.rate_matrix())
    xt = torch.arange(process.num_states)
    torch.testing.assert_close(process.transition_row(xt, torch.tensor(sbar, dtype=torch.float64)), P[xt, :])
    v = torch.rand(3, process.num_states, dtype=torch.float64)
    torch.testing.assert_close(process.transition_apply(v, torch.tensor(sbar, dtype=torch.float64)), v @ P.T)
