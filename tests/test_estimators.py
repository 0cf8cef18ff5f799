"""Training estimators of the bound (objectives/estimators.py): every variance-reduction draw keeps the
estimator unbiased, and combinations that make no sense are refused."""

import itertools
import json
import math

import pytest
import torch
from conftest import json_out, train_argv
from toy import ExactRecordNet, RecordToy

from ddlm.cli import main
from ddlm.config import RunConfig
from ddlm.objectives import MDLM, ScoreEntropy
from ddlm.objectives.estimators import mask_counts, position_weight, unit_draws
from ddlm.processes import Absorbing
from ddlm.schedules import LogLinear


@pytest.mark.parametrize("mode", ["iid", "stratified", "antithetic"])
def test_draws_are_uniform(mode):
    """Each draw mode has the uniform marginal: the mean and the fraction below 0.3 over many batches."""
    g = torch.Generator().manual_seed(0)
    u = torch.cat([unit_draws(32, mode, g, "cpu") for _ in range(4000)])
    assert ((u >= 0) & (u < 1)).all()
    assert abs(u.mean().item() - 0.5) < 0.003 and abs((u < 0.3).double().mean().item() - 0.3) < 0.004
    if mode == "stratified":  # one draw in each of the 32 strata
        assert torch.equal((unit_draws(32, mode, g, "cpu") * 32).floor().long(), torch.arange(32))
    if mode == "antithetic":
        pair = unit_draws(32, mode, g, "cpu")
        torch.testing.assert_close(pair[:16] + pair[16:], torch.ones(16, dtype=torch.float64))


def test_importance_weights_make_counts_unbiased():
    """E_q[(p/q)(k) f(k)] = E_p[f(k)] exactly, for p uniform on 1..n, by enumeration of u's quantiles."""
    n = torch.tensor([7])
    f = torch.tensor([0.3, 1.0, 2.0, 0.1, 5.0, 0.7, 3.0], dtype=torch.float64)
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000  # a fine quadrature of u ~ U[0, 1)
    k, ratio = mask_counts(u, n.expand(len(u)), "importance")
    assert abs((ratio * f[k - 1]).mean().item() - f.mean().item()) < 1e-4
    assert (k[:-1] <= k[1:]).all()  # the inverse CDF is monotone
    counts = torch.bincount(k, minlength=8)[1:].double() / len(u)
    q = torch.arange(1, 8, dtype=torch.float64).rsqrt()
    torch.testing.assert_close(counts, q / q.sum(), atol=1e-4, rtol=0)


def test_weight_one_is_the_bound_and_the_scale_is_kept():
    n, k = torch.tensor([10, 10, 10]), torch.tensor([1, 5, 10])
    torch.testing.assert_close(position_weight(k, n, 1.0), torch.tensor([10.0, 2.0, 1.0], dtype=torch.float64))
    for gamma in (0.0, 0.5):  # the weight's average over r = k/n ~ U(0, 1], times r, is the bound's
        r = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
        assert abs(((2 - gamma) * r ** (1 - gamma)).mean().item() - 1.0) < 1e-3


class ZeroNet(torch.nn.Module):
    """Answers 0 everywhere and records the x_t it is given: every letter is equally likely, so a masked
    position's loss is log R times its weight, and the weight applied is read off the loss."""

    time_conditioned = False

    def __init__(self, V: int):
        super().__init__()
        self.V, self.inputs = V, []

    def forward(self, xt, sbar=None):
        self.inputs.append(xt.clone())
        return torch.zeros(*xt.shape, self.V)


def default_weight_check(cls) -> tuple[tuple, float]:
    """((form, gamma) an absorbing run settles on with its options left open, as `ddlm train` leaves
    them; the largest gap between the loss it then trains and 1.5 sqrt(n / k) k log R): the zero
    network's loss is log R per masked position times the weight applied, (2 - gamma) (n / k)^gamma,
    computed here by hand at gamma = 0.5 (n the record's residues, k those masked, read off its input)."""
    settled = cls.settle_options({o.keyword: o.default for o in cls.options}, "absorbing")
    toy = RecordToy(max_n=4)
    objective = cls(Absorbing(toy.V, support=toy.R), LogLinear(), **settled)
    net = ZeroNet(toy.V)
    x0 = toy.ids.repeat(4, 1)  # every record (lengths 1..4) four times
    loss = objective.training_loss(net, x0, generator=torch.Generator().manual_seed(0)).double()
    (xt,) = net.inputs
    n = (x0 < toy.R).sum(-1).double()
    k = (xt == objective.process.mask_id).sum(-1).double()
    assert ((k >= 1) & (k <= n)).all() and len(set(zip(n.tolist(), k.tolist(), strict=True))) >= 8
    expected = 1.5 * (n / k) ** 0.5 * k * math.log(toy.R)
    return (settled["train_form"], settled["loss_weight"]), (loss - expected).abs().max().item()


@pytest.mark.parametrize("cls", [ScoreEntropy, MDLM], ids=["sedd", "mdlm"])
def test_the_default_weight_is_gamma_one_half_of_the_count_form(cls):
    """Left open, an absorbing run trains the count form with gamma = 0.5 and weighs each masked
    position 1.5 sqrt(n / k); a process that does not mask keeps the time form and the bound's weight."""
    settled, gap = default_weight_check(cls)
    assert settled == ("count", 0.5) and gap < 1e-4
    uniform = cls.settle_options({o.keyword: o.default for o in cls.options}, "uniform")
    assert (uniform["train_form"], uniform["loss_weight"]) == ("time", 1.0)


@pytest.mark.parametrize(
    "variant",
    ["gamma-1", "no-2-minus-gamma", "the-bound's-weight"],
)
def test_the_default_weight_check_rejects_wrong_weights(monkeypatch, variant):
    """The check above fails for a default of gamma = 1, for a weight without its factor 2 - gamma, and
    for the bound's n / k applied whatever gamma: each changes the loss by 0.1 nats or more."""
    from ddlm.objectives import base, estimators

    if variant == "gamma-1":
        monkeypatch.setattr(estimators, "COUNT_FORM_WEIGHT", 1.0)
    elif variant == "no-2-minus-gamma":
        monkeypatch.setattr(base, "position_weight", lambda k, n, gamma: (n.double() / k.double()) ** gamma)
    else:
        monkeypatch.setattr(base, "position_weight", lambda k, n, gamma: n.double() / k.double())
    settled, gap = default_weight_check(MDLM)
    assert settled != ("count", 0.5) or gap > 0.1, (settled, gap)


ESTIMATORS = list(itertools.product(["time", "count"], ["iid", "stratified", "antithetic"], ["uniform"])) + [
    ("count", "stratified", "importance"),
    ("count", "iid", "importance"),
]


def estimator_mean(cls, scale, form, draws, sampling, batches=100, size=300) -> tuple[float, float, float]:
    """(mean, its s.e., the exact value) of the training loss plus -log p(n) with the exact conditionals
    (weight 1), for a record of 4 letters. Each of the `batches` calls draws its own batch of `size`
    rows; a stratified or antithetic batch is one draw of the estimator (its rows are not independent),
    so the s.e. comes from the spread of the batches' means, which are iid."""
    toy = RecordToy(max_n=4)
    objective = cls(Absorbing(toy.V, support=toy.R), LogLinear(eps=0.0), train_form=form, noise_draws=draws,
                    count_sampling=sampling)  # fmt: skip
    net = ExactRecordNet(toy, objective.process.mask_id, scale)
    row = 25  # a record of 4 letters
    x0 = toy.ids[row].expand(size, -1)
    g = torch.Generator().manual_seed(1)
    means = torch.stack(
        [(objective.training_loss(net, x0, generator=g).double() + objective.length_nll(net, x0)).mean()
         for _ in range(batches)]
    )  # fmt: skip
    return means.mean().item(), means.std().item() / math.sqrt(batches), -math.log(toy.p[row].item())


@pytest.mark.parametrize("form,draws,sampling", ESTIMATORS)
@pytest.mark.parametrize("cls,scale", [(ScoreEntropy, 2.0), (MDLM, 1.0)], ids=["sedd", "mdlm"])
def test_every_estimator_has_the_exact_nll_as_its_mean(cls, scale, form, draws, sampling):
    """The training loss with the exact conditionals (weight 1): over 100 batches of 300 its mean is the
    record's exact NLL minus -log p(n) (the length head's term is added by the trainer), within 4 s.e.
    (about 0.01 nats for the count form, 0.1 for the time form's heavy-tailed 1/t)."""
    mean, se, nll = estimator_mean(cls, scale, form, draws, sampling)
    assert abs(mean - nll) < 4 * se + 1e-4, (mean, nll, se)


@pytest.mark.parametrize(
    "wrong,draws,sampling",
    [
        ("no-n/k", "stratified", "uniform"),
        ("no-n/k", "iid", "importance"),
        ("no-ratio", "stratified", "importance"),
        ("no-ratio", "iid", "importance"),
    ],
)
def test_the_estimator_mean_check_rejects_biased_estimators(monkeypatch, wrong, draws, sampling):
    """The same check, with the same draws, fails for a count form that drops the n / k weight (its mean
    is 2.34 nats against 3.66, about 240-1300 s.e. off) or the importance ratio p(k) / q(k) (3.83,
    36-64 s.e. off): each lies beyond 20 s.e., far outside the 4 s.e. the unbiased estimators keep."""
    from ddlm.objectives import base

    if wrong == "no-n/k":
        monkeypatch.setattr(base, "position_weight", lambda k, n, gamma: torch.ones_like(k, dtype=torch.float64))
    else:
        counts = base.mask_counts
        monkeypatch.setattr(base, "mask_counts", lambda u, n, how: (counts(u, n, how)[0], torch.ones_like(u)))
    mean, se, nll = estimator_mean(MDLM, 1.0, "count", draws, sampling)
    assert abs(mean - nll) > 4 * se + 1e-4 and abs(mean - nll) > 20 * se, (mean, nll, se)


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--loss-weight", "0.5", "--train-form", "time"], "--train-form count"),
        (["--process", "uniform", "--loss-weight", "0.5"], "--train-form count"),
        (["--count-sampling", "importance", "--train-form", "time"], "--train-form count"),
        (["--process", "uniform", "--train-form", "count"], "--process absorbing"),
        (["--objective", "ar", "--train-form", "count"], "--objective mdlm or sedd"),
    ],
)
def test_estimator_options_that_make_no_sense_are_refused(family, tmp_path, capsys, flags, needle):
    assert main([*train_argv(family, tmp_path / "r", steps=1), *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flags,form,weight",
    [
        ([], "count", 0.5),  # masked diffusion: the count form, gamma 0.5 (the ablation's winner)
        (["--objective", "mdlm", "--loss-weight", "1"], "count", 1.0),
        (["--objective", "mdlm", "--train-form", "time"], "time", 1.0),
        (["--process", "uniform"], "time", 1.0),  # only the time form fits a process that does not mask
    ],
)
def test_estimator_defaults_are_settled_per_run_and_saved(family, tmp_path, flags, form, weight):
    """Form and weight left open are chosen for the run's process and written to its config.json, so
    a later change of default leaves the run's meaning alone."""
    assert main([*train_argv(family, tmp_path / "r", steps=1), *flags]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["objective_options"]
    assert (saved["train_form"], saved["loss_weight"]) == (form, weight)


def test_a_run_saved_before_the_estimator_options_trained_the_time_form(family, tmp_path):
    run = tmp_path / "r"
    assert main(train_argv(family, run, steps=1)) == 0
    record = json.loads((run / "config.json").read_text())
    record["objective_options"] = {}
    (run / "config.json").write_text(json.dumps(record))
    config = RunConfig.read(run)
    assert config.objective_class.refuse(config) is None
    objective = config.build_objective()
    assert (objective.train_form, objective.loss_weight) == ("time", 1.0)


class SpyNet(torch.nn.Module):
    """Records every call's estimate of x0 and answers with a fixed random output."""

    time_conditioned = False

    def __init__(self, V: int):
        super().__init__()
        self.V, self.calls = V, []

    def forward(self, xt, sbar=None, x0_estimate=None):
        self.calls.append(None if x0_estimate is None else x0_estimate.clone())
        g = torch.Generator().manual_seed(int(xt.sum()))
        return torch.randn(*xt.shape, self.V, generator=g)


def test_self_conditioning_evaluates_as_it_trains():
    """The bound of a self-conditioned objective is taken as its conditioned training half is: a first
    pass without an estimate, then the pass that reads that pass's estimate of x0."""
    toy = RecordToy(max_n=4)
    objective = MDLM(Absorbing(toy.V, support=toy.R), LogLinear(eps=0.0), self_conditioning=True)
    net = SpyNet(toy.V)
    x0 = toy.ids[20:28]
    objective.bound_at(net, x0, torch.rand(len(x0), dtype=torch.float64), generator=torch.Generator())
    assert len(net.calls) == 2 and net.calls[0] is None
    estimate = net.calls[1]
    moving = objective.process.moves(x0)
    torch.testing.assert_close(estimate.sum(-1), moving.float())  # a distribution at moving positions
    assert (estimate[..., toy.R :] == 0).all()  # never a context token
    net.calls.clear()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        objective.training_loss(net, x0, generator=g)
    conditioned = sum(call is not None for call in net.calls)
    assert len(net.calls) - conditioned == 200 and 70 <= conditioned <= 130  # half the batches, two passes


def test_self_conditioning_starts_as_a_no_op(make_run, capsys):
    """A fresh self-conditioned network ignores its estimate (a zero map), and a trained one samples and
    evaluates through the CLI, every sample well formed."""
    from ddlm.networks import NetConfig, Transformer

    net = Transformer(NetConfig(vocab_in=6, vocab_out=5, max_len=8, d_model=32, n_layers=1, n_heads=2,
                                self_conditioning=True))  # fmt: skip
    x = torch.randint(0, 6, (3, 8))
    torch.testing.assert_close(net(x), net(x, x0_estimate=torch.rand(3, 8, 5)))
    run = make_run(steps=8, objective="mdlm", self_conditioning=True, samples=2, max_len=48, batch_size=16)
    capsys.readouterr()  # the training run's own report
    result = json_out(capsys, ["sample", str(run), "--n", "4", "--steps", "32", "--json", "--quiet"])
    assert all(result["valid"])
    result = json_out(capsys, ["eval", str(run), "--json", "--quiet", "--time-samples", "2", "--max-sequences", "8"])
    assert math.isfinite(result["bits_per_token"])
