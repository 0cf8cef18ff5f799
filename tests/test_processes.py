import pytest
import torch

from ddlm.processes import Absorbing, Uniform
from ddlm.schedules import Geometric, LogLinear

# support 4 of 6: tokens 4 and 5 are context tokens (a protein's markers) that never move
PROCESSES = [Absorbing(5), Uniform(5), Absorbing(6, support=4), Uniform(6, support=4)]
IDS = ["absorbing", "uniform", "absorbing-support", "uniform-support"]


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
@pytest.mark.parametrize("sbar", [1e-4, 0.3, 2.0, 9.0])
def test_closed_form_transition_equals_matrix_exp(process, sbar):
    expected = torch.matrix_exp(sbar * process.rate_matrix())
    torch.testing.assert_close(process.transition_matrix(sbar), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
@pytest.mark.parametrize("token", [2, 4])
def test_perturb_frequencies_match_transition(process, token):
    g = torch.Generator().manual_seed(0)
    sbar = 0.7
    x0 = torch.full((200_000,), token)
    xt = process.perturb(x0, torch.tensor(sbar), g)
    freq = torch.bincount(xt, minlength=process.num_states).double() / len(xt)
    expected = process.transition_matrix(sbar)[:, token]
    # 5 standard errors of a binomial proportion at n = 200k
    assert torch.allclose(freq, expected, atol=5 * (0.25 / 200_000) ** 0.5)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
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
    for x in range(process.support, V):  # a context token stays itself whatever the scores
        assert got[x, x] == 1 and got[x].sum() == 1


@pytest.mark.parametrize("schedule", [LogLinear(1e-3), LogLinear(0.0), Geometric()])
def test_rate_is_derivative_of_total(schedule):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(schedule.total(t).sum(), t)
    torch.testing.assert_close(schedule.rate(t), grad)


def test_loglinear_masking_probability_is_linear():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(-torch.expm1(-LogLinear(1e-3).total(t)), (1 - 1e-3) * t)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_transition_row_and_apply_match_dense_matrix(process):
    sbar = 0.8
    P = torch.matrix_exp(sbar * process.rate_matrix())
    xt = torch.arange(process.num_states)
    torch.testing.assert_close(process.transition_row(xt, torch.tensor(sbar, dtype=torch.float64)), P[xt, :])
    v = torch.rand(3, process.num_states, dtype=torch.float64)
    torch.testing.assert_close(process.transition_apply(v, torch.tensor(sbar, dtype=torch.float64)), v @ P.T)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_reverse_rates_are_q_times_scores(process):
    """R(x_t -> y) = Q[x_t, y] s_y off the diagonal, 0 on it: Q[x_t, y] is the forward rate from y into
    x_t (the dense rate matrix's convention), so a context token neither leaves nor is reached."""
    g = torch.Generator().manual_seed(2)
    V, S = process.vocab_size, process.num_states
    xt = torch.arange(S)
    s = torch.rand(S, V, generator=g, dtype=torch.float64)
    got = process.reverse_rates(xt, s)
    Q = process.rate_matrix()
    for row, x in enumerate(xt.tolist()):
        expected = torch.cat([Q[x, :V] * s[row], torch.zeros(S - V, dtype=torch.float64)])
        expected[x] = 0.0
        torch.testing.assert_close(got[row], expected)


@pytest.mark.parametrize("process", [Absorbing(6, support=4), Uniform(6, support=4)], ids=IDS[2:])
def test_prior_and_noise_stay_on_the_moving_tokens(process):
    g = torch.Generator().manual_seed(3)
    prior = process.prior_sample((10_000,), g, "cpu")
    assert not ((prior >= process.support) & (prior < process.vocab_size)).any()
    noised = process.perturb(torch.randint(0, 4, (10_000,), generator=g), torch.tensor(5.0), g)
    assert not ((noised >= process.support) & (noised < process.vocab_size)).any()
