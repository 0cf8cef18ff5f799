"""Predictor guidance (guidance/predictor.py) against exact answers on an enumerable toy, and the
`ddlm train-predictor` command.

The toy: ToyDistribution's 27 sequences (length 3, vocabulary 3) with the label y(x) = [x_1 + x_2 + x_3 >= 4].
Its exact predictor p(y | x_t) and exact conditional law p(x | y) come from enumeration."""

import argparse
import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILY_RUN, json_out
from toy import ExactAbsorbingNet, ToyDistribution

from ddlm.cli import main
from ddlm.cli.predictor import add_predictor_arguments
from ddlm.guidance.predictor import (
    META,
    WEIGHTS,
    Budget,
    ExactShift,
    NoisyInputs,
    Predictor,
    PredictorConfig,
    PredictorGuided,
    TaylorShift,
    fit,
    guidance_refusal,
    held_out_quality,
    load_predictor,
    predictor_guided,
    predictor_network,
)
from ddlm.objectives import D3PM, MDLM, AutoRegressive, BlockDiffusion, ScoreEntropy
from ddlm.processes import Absorbing, Uniform
from ddlm.run import load_run
from ddlm.sampling import SampleSpec, TauLeaping, generate, sample_many
from ddlm.schedules import Geometric, LogLinear

N = 20_000
TARGET = 1


def label_of(seqs: torch.Tensor) -> torch.Tensor:
    return (seqs.sum(-1) >= 4).long()


class ExactPredictor(torch.nn.Module):
    """log p(y | x_t) by enumeration: the toy's mass on the sequences that agree with x_t's unmasked tokens,
    tabulated once for all (V + 1)^L noisy states. `independent`: the toy's law replaced by the product of
    its marginals (a predictor blind to how positions go together, a wrong one)."""

    def __init__(self, toy: ToyDistribution, mask_id: int, independent: bool = False):
        super().__init__()
        self.base = mask_id + 1
        x = every_noisy_state(toy, mask_id)
        p = toy.p
        if independent:
            marginals = toy.masked_conditionals(torch.full((1, toy.L), mask_id), mask_id)[0]  # [L, V]
            p = marginals[torch.arange(toy.L), toy.seqs].prod(-1)
        consistent = ((x[:, None, :] == toy.seqs[None]) | (x[:, None, :] == mask_id)).all(-1)
        joint = (consistent * p[None]) @ F.one_hot(label_of(toy.seqs), 2).double()
        self.table = torch.log(joint / joint.sum(-1, keepdim=True))  # [(V + 1)^L, 2]
        self.powers = self.base ** torch.arange(toy.L - 1, -1, -1)

    def forward(self, x):
        return self.table[(x * self.powers).sum(-1)]


def conditional_law(toy: ToyDistribution) -> torch.Tensor:
    p = toy.p * (label_of(toy.seqs) == TARGET)
    return p / p.sum()


def total_variation(toy: ToyDistribution, samples: torch.Tensor, law: torch.Tensor) -> float:
    counts = torch.bincount(toy.index(samples), minlength=len(law)).double()
    return 0.5 * (counts / counts.sum() - law).abs().sum().item()


def every_noisy_state(toy: ToyDistribution, mask_id: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(toy.V + 1), repeat=toy.L)))


# --- the maths -----------------------------------------------------------------------------------
def test_exact_predictor_averages_over_the_next_unmasking():
    """sum_c p(x0_i = c | x_t) p(y | x^{i<-c}) = p(y | x_t) at every masked position of every x_t (64
    states): why MDLM's renormalised guidance is exact at gamma 1. A predictor that takes the positions as
    independent (the product of the toy's marginals) breaks it."""
    toy = ToyDistribution()
    mask = toy.V
    xt = every_noisy_state(toy, mask)
    post = toy.masked_conditionals(xt, mask)  # [S, L, V]
    for predictor, holds in ((ExactPredictor(toy, mask), True), (ExactPredictor(toy, mask, independent=True), False)):
        worst = 0.0
        for i in range(toy.L):
            rows = xt[:, i] == mask
            changed = xt[rows].repeat_interleave(toy.V, 0)
            changed[:, i] = torch.arange(toy.V).repeat(int(rows.sum()))
            after = predictor(changed)[:, TARGET].exp().view(-1, toy.V)  # p(y | x^{i<-c})
            average = (post[rows, i] * after).sum(-1)
            worst = max(worst, (average - predictor(xt[rows])[:, TARGET].exp()).abs().max().item())
        assert (worst < 1e-12) == holds, worst


@pytest.mark.parametrize("objective_cls,scale", [(MDLM, 1.0), (ScoreEntropy, 3.0)], ids=["mdlm", "sedd"])
def test_the_shift_reweights_each_rate_by_the_predictor_ratio(objective_cls, scale):
    """SEDD: every score s_c at a masked position is multiplied by (p(y | x^{i<-c}) / p(y | x))^gamma;
    MDLM: the clean-token distribution is p(c | x_t) ratio_c^gamma renormalised. Unmasked positions unchanged."""
    toy, gamma = ToyDistribution(), 1.7
    process = Absorbing(toy.V)
    objective = objective_cls(process, LogLinear())
    net, predictor = ExactAbsorbingNet(toy, process.mask_id, scale), ExactPredictor(toy, process.mask_id)
    guided = PredictorGuided(net, predictor, TARGET, gamma, ExactShift(), process.mask_id, toy.V)
    xt = every_noisy_state(toy, process.mask_id)
    sbar = torch.tensor(0.7)
    s, s_guided = (objective.log_score(n(xt), xt, sbar).exp() for n in (net, guided))
    ratio = torch.ones_like(s)
    for i, c in itertools.product(range(toy.L), range(toy.V)):
        changed = xt.clone()
        changed[:, i] = c
        base = predictor(xt)[:, TARGET]
        r = (predictor(changed)[:, TARGET] - base).exp()
        # a state whose label is already out of reach (p(y | x) = 0) keeps its rates
        ratio[:, i, c] = torch.where((xt[:, i] == process.mask_id) & (base > -torch.inf), r, 1.0)
    expected = s * ratio**gamma
    if objective_cls is MDLM:
        expected = expected / expected.sum(-1, keepdim=True) * s.sum(-1, keepdim=True)
    assert torch.allclose(s_guided, expected, rtol=1e-9, atol=0)


def test_the_predictors_cost_is_counted():
    """One guided call with the exact shift reads x and every single-site change: B + (masked) x V
    sequences, in 1 + ceil((masked) x V / chunk) passes; the taylor shift one pass of B."""
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    net, predictor = ExactAbsorbingNet(toy, process.mask_id, 1.0), ExactPredictor(toy, process.mask_id)
    xt = every_noisy_state(toy, process.mask_id)
    masked = int((xt == process.mask_id).sum())
    shift = ExactShift()
    shift.chunk_tokens = 40 * toy.L  # 40 changed sequences per pass
    guided = PredictorGuided(net, predictor, TARGET, 1.0, shift, process.mask_id, toy.V)
    guided(xt, torch.tensor(0.7))
    assert guided.predictor_inputs == len(xt) + masked * toy.V
    assert guided.predictor_calls == 1 + math.ceil(masked * toy.V / 40)


def guided_samples(objective_cls, scale, predictor, gamma, steps=256, n=N):
    toy = ToyDistribution()
    process = Absorbing(toy.V)
    objective = objective_cls(process, LogLinear())
    net = ExactAbsorbingNet(toy, process.mask_id, scale)
    guided = PredictorGuided(net, predictor, TARGET, gamma, ExactShift(), process.mask_id, toy.V)
    spec = SampleSpec(steps=steps, rule=TauLeaping())
    result = generate(guided, objective, n, toy.L, spec, generator=torch.Generator().manual_seed(0))
    assert not (result.tokens == process.mask_id).any()
    return total_variation(toy, result.tokens, conditional_law(toy))


# Expected TV of an exact sampler's histogram over the 15 sequences with the label at n = 20k is about
# 0.01 (sum_k sqrt(p_k / (2 pi n))); 0.03 leaves room for 256 steps' discretisation, as in test_sampling.
BOUND = 0.03


@pytest.mark.parametrize(
    "objective_cls,scale",
    [(MDLM, 1.0), (ScoreEntropy, 3.0)],
    ids=["mdlm", "sedd"],
)
def test_exact_predictor_at_gamma_one_samples_the_conditional_law(objective_cls, scale):
    """The wrapped network in the cached (clocked) sampler; TV observed 0.011 for both."""
    toy = ToyDistribution()
    tv = guided_samples(objective_cls, scale, ExactPredictor(toy, toy.V), 1.0)
    assert tv < BOUND


@pytest.mark.parametrize(
    "gamma,independent",
    [(0.0, False), (1.0, True), (2.0, False)],
    ids=["unguided", "independent-positions-predictor", "gamma-2"],
)
def test_the_bound_has_power_against_wrong_guidance(gamma, independent):
    """The same bound fails unguided (gamma 0: the toy's own law), with a predictor that takes the positions
    as independent, and at gamma 2 (sharper than the conditional law)."""
    toy = ToyDistribution()
    tv = guided_samples(MDLM, 1.0, ExactPredictor(toy, toy.V, independent), gamma)
    assert tv > BOUND


class LinearPredictor(torch.nn.Module):
    """log p(y | x) = sum_i W[i, x_i, y]: linear in the one-hot input (not normalised; the shift needs
    only differences of log p(target | .))."""

    def __init__(self, L: int, S: int, K: int = 2, seed: int = 0):
        super().__init__()
        self.S = S
        self.W = torch.nn.Parameter(torch.randn(L, S, K, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        onehot = x if x.is_floating_point() else F.one_hot(x, self.S).float()
        return torch.einsum("bls,lsk->bk", onehot.to(self.W.dtype), self.W)


def some_noisy_states(L: int, V: int, n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(V, (n, L), generator=g)
    return torch.where(torch.rand(n, L, generator=g) < 0.5, V, x)


def test_taylor_shift_is_exact_for_a_predictor_linear_in_the_one_hot():
    L, V = 6, 5
    x = some_noisy_states(L, V)
    linear = LinearPredictor(L, V + 1)
    exact, taylor = (shift(linear, x, TARGET, V, V - 1, V) for shift in (ExactShift(), TaylorShift()))
    assert (exact[..., V - 1] == 0).all() and (taylor[..., V - 1] == 0).all()  # a context token: no shift
    assert (exact[x != V] == 0).all() and exact.abs().sum() > 0
    assert torch.allclose(taylor, exact, atol=1e-5)
    split = ExactShift()
    split.chunk_tokens = 7  # two changed inputs per predictor call: the batching does not change the shift
    assert torch.equal(split(linear, x, TARGET, V, V - 1, V), exact)
    # power: for a transformer predictor (not linear in its input) the first order is not the exact shift
    net = Predictor(PredictorConfig(states=V + 1, classes=2, max_len=L, mask_id=V, support=V - 1))
    torch.nn.init.normal_(net.head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    exact, taylor = (shift(net, x, TARGET, V, V - 1, V) for shift in (ExactShift(), TaylorShift()))
    assert (taylor - exact).abs().max() > 1e-3


def test_taylor_shift_runs_inside_the_samplers_inference_mode():
    L, V = 4, 3
    x = some_noisy_states(L, V, 8)
    linear = LinearPredictor(L, V + 1)
    with torch.inference_mode():
        inside = TaylorShift()(linear, x, TARGET, V, V, V)
    assert torch.allclose(inside, ExactShift()(linear, x, TARGET, V, V, V), atol=1e-5)


def test_taylor_shift_of_a_predictor_copied_inside_inference_mode():
    """A bf16 copy made inside inference mode has weights autograd cannot use; the shift takes a copy of
    its own once, and agrees with the float32 predictor's to bf16's precision."""
    L, V = 5, 4
    x = some_noisy_states(L, V, 16)
    net = Predictor(PredictorConfig(states=V + 1, classes=2, max_len=L, mask_id=V, support=V))
    torch.nn.init.normal_(net.head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    shift = TaylorShift()
    with torch.inference_mode():
        low = copy.deepcopy(net).to(torch.bfloat16)
        first, again = shift(low, x, TARGET, V, V, V), shift(low, x, TARGET, V, V, V)
    assert torch.equal(first, again)
    reference = TaylorShift()(net, x, TARGET, V, V, V)
    assert (first - reference).abs().max() < 0.05 * reference.abs().max()


class NoNoise:
    """A schedule that never masks: a predictor trained on clean records only (the wrong way)."""

    def total(self, t):
        return torch.zeros_like(t)


def test_training_on_the_forward_process_approaches_the_bayes_predictor():
    """`fit` on records drawn from the toy, masked by the run's forward process, gives a predictor whose
    held-out log-loss at t = 0, 0.5 and 0.9 is within 0.05 nats of the exact p(y | x_t)'s on the same
    noisy inputs (observed 0.014, 0.028, 0.020). Trained on clean records only, it fails the bound
    where masks appear (1.4 nats and more), and so does the untrained one at t = 0 and 0.5."""
    toy, process = ToyDistribution(), Absorbing(3)
    g = torch.Generator().manual_seed(0)

    def records(n):
        seqs = toy.seqs[torch.multinomial(toy.p, n, replacement=True, generator=g)]
        return seqs, label_of(seqs)

    train, heldout = records(4000), NoisyInputs(*records(4000), process, LogLinear())
    frequencies = torch.tensor([0.5, 0.5])
    bayes = [row["log_loss"] for row in held_out_quality(ExactPredictor(toy, toy.V), heldout, frequencies)]
    gaps = {}
    for name, schedule, steps in (("noisy", LogLinear(), 300), ("clean", NoNoise(), 100), ("untrained", None, 0)):
        torch.manual_seed(0)
        cfg = PredictorConfig(states=4, classes=2, max_len=3, mask_id=3, support=3, d_model=32, n_layers=1, n_heads=2)
        predictor = Predictor(cfg)
        fit(predictor, NoisyInputs(*train, process, schedule), Budget(steps), batch_size=128, lr=3e-3)
        quality = held_out_quality(predictor, heldout, frequencies)
        gaps[name] = [row["log_loss"] - b for row, b in zip(quality, bayes, strict=True)]
    assert all(-0.01 < gap < 0.05 for gap in gaps["noisy"]), gaps  # below 0 only by the draws' noise
    assert gaps["clean"][0] < 0.05 and min(gaps["clean"][1:]) > 0.05, gaps
    assert min(gaps["untrained"][:2]) > 0.05, gaps


# --- the command ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "charge"
    assert main(["train-predictor", str(tiny_run), "--out", str(out), "--property", "charge>=0", "--steps", "20",
                 "--preset", "tiny", "--quiet"]) == 0  # fmt: skip
    return out


def test_train_predictor_writes_a_predictor_and_its_held_out_quality(predictor_dir, tiny_run):
    assert (predictor_dir / WEIGHTS).is_file() and (predictor_dir / META).is_file()
    predictor, meta = load_predictor(predictor_dir)
    assert meta["labels"] == ["no", "yes"] and meta["default_target"] == "yes"
    assert [row["t"] for row in meta["heldout"]] == [0.0, 0.5, 0.9]
    # the fraction masked at t under the run's log-linear schedule (eps = 1e-3): (1 - eps) t
    assert [row["masked"] for row in meta["heldout"]] == pytest.approx([0.0, 0.4995, 0.8991])
    for row in meta["heldout"]:
        assert 0 <= row["accuracy"] <= 1 and math.isfinite(row["log_loss"]) and row["prior_log_loss"] > 0
    assert sum(meta["records"]["train"].values()) > 0 and meta["training"]["steps"] == 20
    assert isinstance(predictor, Predictor)


def test_train_predictor_json_and_labels_table(tiny_run, tmp_path, capsys):
    ids = [line[1:].split()[0] for line in (tiny_run / "heldout.fa").read_text().splitlines() if line[0] == ">"]
    table = tmp_path / "labels.tsv"
    names = [f"seq{i}" for i in range(300)]
    table.write_text("".join(f"{name}\t{'odd' if k % 2 else 'even'}\n" for k, name in enumerate(names)))
    out = tmp_path / "pred"
    result = json_out(capsys, ["train-predictor", str(tiny_run), "--out", str(out), "--labels", str(table),
                               "--steps", "3", "--preset", "tiny", "--quiet", "--json"])  # fmt: skip
    assert result["labels"] == ["even", "odd"] and result["default_target"] is None
    assert sum(result["records"]["heldout"].values()) == len(ids)


@pytest.mark.parametrize("approx", ["exact", "taylor"])
def test_guided_sampling_of_a_trained_run(predictor_dir, tiny_run, approx):
    loaded = load_run(tiny_run)
    net = predictor_guided(loaded, predictor_dir, None, 2.0, approx)
    from ddlm.domains import domain_from_config

    domain = domain_from_config(loaded.config.data, tiny_run)
    spec = domain.framed(SampleSpec(steps=8), net, 2, 0, (6, 6))
    ids, nfe, _ = sample_many(net, loaded.objective, 2, domain.length, spec, seed=0, device="cpu")
    texts, valid = domain.decode(ids)
    assert all(valid) and all(len(t) == 6 for t in texts) and nfe <= 8


def cli_error(capsys, argv) -> str:
    capsys.readouterr()  # what the fixtures printed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--property", "hydrophobicity>=1"], "unknown property 'hydrophobicity'"),
        (["--property", "charge>=many"], "is not a number"),
        (["--property", "charge"], "write PROPERTY>=NUMBER"),
        (["--property", "sudoku>=3"], "reads sudoku samples"),
        (["--property", "charge>=1000"], "every training record is 'no'"),
        (["--labels", "no/such/labels.tsv"], "no such file"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(tiny_run, tmp_path, capsys, flags, message):
    out = tmp_path / "pred"
    err = cli_error(capsys, ["train-predictor", str(tiny_run), "--out", str(out), "--steps", "1", *flags])
    assert message in err and "train-predictor" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags", [{"objective": "ar"}, {"process": "uniform"}, {"objective": "bd3lm"}], ids=["ar", "uniform", "bd3lm"]
)
def test_runs_that_are_not_masked_diffusion_are_refused(make_run, tmp_path, capsys, flags):
    run = make_run(steps=2, eval_every=2, checkpoint_every=2, samples=0, **FAMILY_RUN, **flags)
    out = tmp_path / "pred"
    err = cli_error(capsys, ["train-predictor", str(run), "--out", str(out), "--property", "charge>=0"])
    assert "predictor guidance needs a masked diffusion run" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "objective,steers",
    [
        (lambda: MDLM(Absorbing(4), LogLinear()), True),
        (lambda: ScoreEntropy(Absorbing(4), LogLinear()), True),
        (lambda: ScoreEntropy(Uniform(4), Geometric()), False),
        (lambda: D3PM(Absorbing(4), LogLinear()), False),
        (lambda: BlockDiffusion(Absorbing(4), LogLinear(), block_size=2), False),
        (lambda: AutoRegressive(Absorbing(4), LogLinear()), False),
    ],
    ids=["mdlm", "sedd", "sedd-uniform", "d3pm", "bd3lm", "ar"],
)
def test_which_objectives_predictor_guidance_steers(objective, steers):
    assert (guidance_refusal(objective()) is None) == steers


def test_a_predictor_for_another_run_or_label_is_refused(predictor_dir, tiny_run):
    from ddlm.errors import UserError

    loaded = load_run(tiny_run)
    with pytest.raises(UserError, match="not a label of this predictor"):
        predictor_guided(loaded, predictor_dir, "maybe", 1.0)
    with pytest.raises(UserError, match="no predictor.json"):
        predictor_guided(loaded, tiny_run, None, 1.0)


def sampling_flags(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_predictor_arguments(parser)
    return parser.parse_args(argv)


def test_sampling_flags_steer_the_network_or_are_refused_without_a_predictor(predictor_dir, tiny_run):
    from ddlm.errors import UserError

    loaded = load_run(tiny_run)
    assert predictor_network(loaded, sampling_flags([])) is loaded.net
    net = predictor_network(loaded, sampling_flags(["--predictor", str(predictor_dir), "--guide-approx", "taylor"]))
    assert isinstance(net, PredictorGuided) and isinstance(net.shift, TaylorShift) and net.gamma == 1.0
    assert net.target == 1 and net.cfg is loaded.net.cfg  # the default target "yes"; the run's own config
    for flags in (["--target", "yes"], ["--guidance", "2"], ["--guide-approx", "exact"]):
        with pytest.raises(UserError, match=f"{flags[0]} needs --predictor DIR"):
            predictor_network(loaded, sampling_flags(flags))
    # the Python API's options are checked the same way (no argparse type in between)
    for gamma in (-1.0, float("nan"), "2"):
        options = argparse.Namespace(predictor=str(predictor_dir), target=None, guidance=gamma, guide_approx=None)
        with pytest.raises(UserError, match="--guidance"):
            predictor_network(loaded, options)
    options = argparse.Namespace(predictor=str(predictor_dir), target=None, guidance=None, guide_approx="second")
    with pytest.raises(UserError, match="--guide-approx second: use one of exact, taylor"):
        predictor_network(loaded, options)
