"""The other objectives and decoding policies on the same backbone, against independent computations."""

import math

import pytest
import torch
from toy import ExactAbsorbingNet, ExactARNet, ToyDistribution

from ddlm.networks import NetConfig, Transformer
from ddlm.objectives import D3PM, MDLM, AutoRegressive
from ddlm.objectives.ar import generate_ar
from ddlm.ordering import ORDERS, commit_top
from ddlm.processes import Absorbing, Uniform
from ddlm.sampling import SampleResult, SampleSpec, TauLeaping, generate, generate_semi_ar, masked_fraction
from ddlm.schedules import Geometric, LogLinear


def test_ar_nll_equals_enumeration():
    toy = ToyDistribution()
    objective = AutoRegressive(Absorbing(toy.V), None)
    nll = objective.loss(ExactARNet(toy), toy.seqs)
    torch.testing.assert_close(nll.double(), -toy.p.log(), rtol=1e-5, atol=1e-6)


def test_ar_sampler_matches_exact_distribution():
    toy = ToyDistribution()
    objective = AutoRegressive(Absorbing(toy.V), None)
    n = 20_000
    result = generate_ar(
        ExactARNet(toy), objective, n, toy.L, SampleSpec(use_cache=False), generator=torch.Generator().manual_seed(0)
    )
    counts = torch.bincount(toy.index(result.tokens), minlength=len(toy.p)).double()
    assert 0.5 * (counts / n - toy.p).abs().sum() < 0.03  # exact sampler: expected TV about 0.015 at n = 20k


@pytest.mark.parametrize("positions", ["sinusoidal", "rotary"])
def test_ar_kv_cache_gives_the_same_samples(positions):
    torch.manual_seed(0)
    net = Transformer(
        NetConfig(
            vocab_in=6, vocab_out=5, max_len=12, d_model=32, n_layers=2, n_heads=2, causal=True, positions=positions
        )
    )
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net.eval()
    objective = AutoRegressive(Absorbing(5), None)
    runs = [
        generate_ar(net, objective, 8, 12, SampleSpec(use_cache=c), generator=torch.Generator().manual_seed(1)).tokens
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])


def test_ar_stops_when_every_record_has_ended():
    """With end_id set, sampling stops after the last sequence's end marker: each record is the same up to
    its end marker as without the stop, pad after it, and the batch took fewer network calls."""
    torch.manual_seed(0)
    end_id, pad_id, length = 3, 4, 40
    net = Transformer(NetConfig(vocab_in=6, vocab_out=5, max_len=length, d_model=32, n_layers=2, n_heads=2,
                                causal=True))  # fmt: skip
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net.head.bias.data[end_id] += 2.0  # records end early, so the stop has something to save
    net.eval()
    objective = AutoRegressive(Absorbing(5), None)
    spec = SampleSpec(end_id=end_id, pad_id=pad_id)
    full = generate_ar(net, objective, 16, length, SampleSpec(), generator=torch.Generator().manual_seed(1))
    stopped = generate_ar(net, objective, 16, length, spec, generator=torch.Generator().manual_seed(1))
    ends = [int((row == end_id).nonzero()[0]) for row in full.tokens]
    assert int(stopped.nfe.max()) == max(ends) + 1 < length
    for row_full, row_stopped, end in zip(full.tokens, stopped.tokens, ends, strict=True):
        assert torch.equal(row_stopped[: end + 1], row_full[: end + 1])
        assert bool((row_stopped[max(ends) + 1 :] == pad_id).all())


@pytest.mark.parametrize("process", [Absorbing(4), Uniform(4)], ids=["absorbing", "uniform"])
def test_d3pm_posterior_equals_bayes(process):
    """q(x_{k-1} = a | x_k = b, x0 = c) = P_step[b, a] P_prev[a, c] / P_k[b, c], dense matrices from matrix_exp."""
    d3pm = D3PM(process, LogLinear())
    sbar_prev, sbar_k = 0.4, 1.1
    Q = process.rate_matrix()
    P_prev, P_step, P_k = (torch.matrix_exp(s * Q) for s in (sbar_prev, sbar_k - sbar_prev, sbar_k))
    S = process.num_states
    for b in range(S):
        for c in range(process.vocab_size):
            if P_k[b, c] == 0:
                continue  # x_k = b is impossible from x0 = c
            expected = P_step[b, :] * P_prev[:, c] / P_k[b, c]
            got = d3pm.posterior(
                torch.tensor(b),
                torch.nn.functional.one_hot(torch.tensor(c), S).double(),
                torch.tensor(sbar_k, dtype=torch.float64),
                torch.tensor(sbar_prev, dtype=torch.float64),
            )
            torch.testing.assert_close(got, expected)
    # the model posterior mixes the true ones with weights p(x0 = c | x_k = b) proportional to w_c P_k[b, c]
    w = torch.softmax(torch.randn(process.vocab_size, dtype=torch.float64), 0)
    b = S - 1
    mix = sum(w[c] * P_k[b, c] * P_step[b, :] * P_prev[:, c] / P_k[b, c] for c in range(process.vocab_size))
    got = d3pm.posterior(
        torch.tensor(b),
        torch.nn.functional.pad(w, (0, S - process.vocab_size)),
        torch.tensor(sbar_k, dtype=torch.float64),
        torch.tensor(sbar_prev, dtype=torch.float64),
    )
    torch.testing.assert_close(got, mix / mix.sum())


def test_d3pm_one_step_bound_is_product_of_marginals():
    """T = 1: x_1 is all masked, so the bound is -sum_i log p(x0_i): exact, deterministic."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    d3pm = D3PM(process, LogLinear(eps=0.0), steps=1)
    net = ExactAbsorbingNet(toy, process.mask_id, 1.0)
    marginals = toy.masked_conditionals(torch.full((1, toy.L), process.mask_id), process.mask_id)[0]
    got = d3pm.loss(net, toy.seqs, generator=torch.Generator().manual_seed(0))
    expected = -torch.log(marginals[torch.arange(toy.L), toy.seqs]).sum(-1)
    torch.testing.assert_close(got.double(), expected)


def test_d3pm_many_step_bound_approaches_nll_with_exact_conditionals():
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    d3pm = D3PM(process, LogLinear(eps=0.0), steps=500)
    net = ExactAbsorbingNet(toy, process.mask_id, 1.0)
    for row in [3, 17]:
        x0 = toy.seqs[row].expand(40_000, -1)
        losses = d3pm.loss(net, x0, generator=torch.Generator().manual_seed(row)).double()
        mean, se = losses.mean().item(), losses.std().item() / math.sqrt(len(losses))
        nll = -math.log(toy.p[row].item())
        # the factorised reverse step costs O(1/T) in the bound; 4 s.e. for the Monte-Carlo part
        assert nll - 4 * se <= mean <= nll + 4 * se + 0.02, (mean, se, nll)


def test_d3pm_uniform_prior_term_is_exact_kl():
    d3pm = D3PM(Uniform(4), Geometric(smax=2.0), steps=10)
    x0 = torch.tensor([[0, 3]])
    q = torch.matrix_exp(2.0 * Uniform(4).rate_matrix())[:, 0]
    expected = 2 * (q * torch.log(q * 4)).sum()
    torch.testing.assert_close(d3pm.prior_kl(x0).double(), expected.reshape(1), rtol=1e-5, atol=1e-7)


def tiny_net(seed=0):
    torch.manual_seed(seed)
    net = Transformer(NetConfig(vocab_in=6, vocab_out=5, max_len=16, d_model=32, n_layers=2, n_heads=2))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


@pytest.mark.parametrize("order", sorted(set(ORDERS) - {"confidence"}))  # confidence: its own tests below
@pytest.mark.parametrize("remask", [False, True], ids=["commit", "remask"])
def test_orders_commit_the_scheduled_count_and_keep_conditioning(order, remask):
    process = Absorbing(5)
    objective = MDLM(process, LogLinear())
    B, L, steps = 6, 16, 10
    g = torch.Generator().manual_seed(0)
    clamp = torch.zeros(B, L, dtype=torch.bool)
    clamp[:, :3] = True
    clamp[:, -2:] = True
    values = torch.randint(0, 5, (B, L), generator=g)
    policy = ORDERS[order](noise=0.5 if order != "random" else 0.0, remask=remask)
    result = generate(
        tiny_net(),
        objective,
        B,
        L,
        SampleSpec(steps=steps, rule=TauLeaping(), order=policy),
        clamp=clamp,
        clamp_values=values,
        generator=g,
        keep_history=True,
    )
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    n_free = (~clamp).sum(-1)
    for i, state in enumerate(result.history[1 : steps + 1], start=1):
        expected = torch.round(n_free.double() * masked_fraction(objective.schedule, times[i])).long()
        assert torch.equal((state == process.mask_id).sum(-1), expected), (i, order)
        assert torch.equal(state[clamp], values[clamp])
    assert not (result.tokens == process.mask_id).any()


def test_confidence_keeps_masked_what_neither_the_schedule_nor_the_threshold_commits():
    probs = torch.tensor([[[0.95, 0.05], [0.6, 0.4], [0.99, 0.01], [0.5, 0.5], [0.97, 0.03]]])
    masked = torch.tensor([[True, True, True, True, False]])  # the last one is committed already
    free = torch.ones(1, 5, dtype=torch.bool)
    policy = ORDERS["confidence"](threshold=0.9)
    # the schedule would keep 4 of 5 free positions masked; two masked ones are sure, so 2 stay
    assert policy.keep_masked(probs, masked, free, 0.8).tolist() == [2]
    assert policy.keep_masked(probs, masked, free, 0.2).tolist() == [1]  # the schedule asks for more
    # nothing sure: still one position per call
    assert ORDERS["confidence"](threshold=0.999).keep_masked(probs, masked, free, 1.0).tolist() == [3]


def confidence_samples(threshold, order="confidence", steps=12):
    toy = ToyDistribution()
    objective = MDLM(Absorbing(toy.V), LogLinear(eps=0.0))
    policy = ORDERS[order](threshold=threshold) if order == "confidence" else ORDERS[order]()
    spec = SampleSpec(steps=steps, rule=TauLeaping(), order=policy)
    net = ExactAbsorbingNet(toy, objective.process.mask_id, 1.0)
    return generate(net, objective, 64, toy.L, spec, generator=torch.Generator().manual_seed(3), keep_history=True)


def test_confidence_decodes_in_fewer_calls_and_at_least_one_position_per_call():
    V, L = ToyDistribution().V, ToyDistribution().L  # the mask id is V
    # 3 steps for 3 positions: the schedule commits one a step, as does a threshold no probability
    # exceeds, so the samples equal top-prob's; a threshold every prediction exceeds takes one call
    strict, ranked = confidence_samples(1.0, steps=L), confidence_samples(None, order="top-prob", steps=L)
    assert torch.equal(strict.tokens, ranked.tokens) and (strict.nfe == L).all()
    eager = confidence_samples(1e-9, steps=L)
    assert (eager.nfe == 1).all() and not (eager.tokens == V).any()
    # the toy's conditionals are flat (top probabilities about 0.34 to 0.37): 0.36 lets a few through
    assert eager.nfe.sum() < confidence_samples(0.36, steps=L).nfe.sum() < strict.nfe.sum()
    # 64 steps for 3 positions: the schedule alone would commit nothing at most steps; every call commits
    patient = confidence_samples(0.999, steps=64)
    masked = [(state == V).sum(-1) for state in patient.history]
    for before, after in zip(masked, masked[1:], strict=False):
        assert ((after < before) | (before == 0)).all()
    assert masked[L].eq(0).all() and not (patient.tokens == V).any()


def test_commit_top_picks_best_scores_and_remask_can_demote():
    x = torch.tensor([[9, 9, 9, 1]])  # mask id 9; the last position was committed earlier
    cand = torch.tensor([[2, 3, 4, 0]])
    score = torch.tensor([[0.1, 0.9, 0.5, 0.0]])
    free = torch.ones(1, 4, dtype=torch.bool)
    new, _ = commit_top(x, cand, score, free, 9, keep_masked=torch.tensor([1]))
    assert new.tolist() == [[9, 3, 4, 1]]  # two of three masked positions committed: the two best
    # RDM: two free positions may be committed in all; the earlier token (score 0.2) loses to 0.9 and 0.5
    new, sc = commit_top(
        x, cand, score, free, 9, keep_masked=torch.tensor([2]), committed_score=torch.tensor([[0.0, 0.0, 0.0, 0.2]])
    )
    assert new.tolist() == [[9, 3, 4, 9]] and sc[0, 1] == 0.9


def test_semi_ar_windows_overlap_and_reach_the_length():
    calls = []

    def window(clamp, values):
        calls.append((clamp, values))
        tokens = torch.randint(0, 5, (2, 8))
        if clamp is not None:
            tokens = torch.where(clamp, values, tokens)
        return SampleResult(tokens=tokens, nfe=torch.full((2,), 3))

    result = generate_semi_ar(window, 2, 21, 8, 4)
    assert result.tokens.shape == (2, 21)
    assert len(calls) == 5 and (result.nfe == 15).all()  # 8 + 4 * 4 >= 21 tokens
    for clamp, _ in calls[1:]:
        assert clamp[:, :4].all() and not clamp[:, 4:].any()


def test_d3pm_absorbing_samples_match_exact_distribution():
    """D3PM's absorbing schedule is all-mask at t = 1 (sbar = inf); the sampler must still be exact."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    d3pm = D3PM(process, LogLinear(eps=0.0), steps=100)
    result = generate(
        ExactAbsorbingNet(toy, process.mask_id, 1.0),
        d3pm,
        20_000,
        toy.L,
        SampleSpec(steps=256, rule=TauLeaping()),
        generator=torch.Generator().manual_seed(0),
    )
    counts = torch.bincount(toy.index(result.tokens), minlength=len(toy.p)).double()
    assert 0.5 * (counts / 20_000 - toy.p).abs().sum() < 0.03


def test_rotary_scores_depend_only_on_relative_position():
    from ddlm.networks import rotary_tables, rotate

    cos, sin = rotary_tables(64, 16)
    q, k = torch.randn(16), torch.randn(16)

    def score(i, j):
        return (rotate(q[None], cos[i], sin[i]) * rotate(k[None], cos[j], sin[j])).sum()

    torch.testing.assert_close(score(3, 10), score(40, 47), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(score(3, 10), score(3, 11), atol=1e-3)
