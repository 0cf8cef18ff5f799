"""Length as part of the model: records of varying length with start/end markers (proteins).

p(x) = p(n) p(residues | n): the markers and padding are context the process never moves, the length
head gives p(n). With the exact conditionals and the exact p(n) plugged in, the expected bound equals
the exact NLL of every record; the sampler draws n, then the residues, and matches the records'
distribution; infilling with gaps of unknown length matches the exact conditional of gap lengths and
residues given the template's residues. Every sample of every objective is well formed.
"""

import contextlib
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import FAMILY_RUN, json_out
from toy import ExactRecordNet, RecordToy

from ddlm.cli import main
from ddlm.evaluate.likelihood import evaluate_bound
from ddlm.infill import arrangement_nll, choose_arrangements, parse_template
from ddlm.objectives import D3PM, MDLM, ScoreEntropy
from ddlm.processes import Absorbing, Uniform
from ddlm.sampling import SampleSpec, TauLeaping, draw_lengths, generate, sample_many
from ddlm.schedules import Geometric, LogLinear


def record_objective(cls, toy: RecordToy, schedule=None, process=Absorbing, **options):
    return cls(process(toy.V, support=toy.R), schedule or LogLinear(eps=0.0), **options)


def nll(toy: RecordToy, row: int) -> float:
    return -math.log(toy.p[row].item())


@pytest.mark.parametrize("cls,scale", [(ScoreEntropy, 2.0), (MDLM, 1.0)], ids=["sedd", "mdlm"])
def test_bound_is_the_exact_nll_of_every_record(cls, scale):
    """-log p(n) plus the mask-count NELBO of the residues, by enumeration of every mask count k in 1..n
    and every k-subset of the n residue positions (the markers are never masked)."""
    toy = RecordToy()
    objective = record_objective(cls, toy)
    net = ExactRecordNet(toy, objective.process.mask_id, scale)
    for row in range(len(toy.records)):
        x0, n = toy.ids[row][None], int(toy.lengths[row])
        total = objective.length_nll(net, x0).item()
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(1, n + 1), k))
            for subset in subsets:
                masked = torch.zeros(1, toy.L, dtype=torch.bool)
                masked[0, list(subset)] = True
                total += objective.loss_at_mask_count(net, x0, masked=masked).item() / len(subsets) / n
        assert abs(total - nll(toy, row)) < 1e-6, (toy.records[row], total, nll(toy, row))  # float32 losses


def test_evaluation_of_records_is_the_nll_within_its_error():
    """`ddlm eval`'s path: records sorted by length and trimmed (padding is never seen), mask counts
    stratified over 1..n, the length head's term added; bits per (residues + end marker)."""
    toy = RecordToy(max_n=4)
    objective = record_objective(MDLM, toy)
    net = ExactRecordNet(toy, objective.process.mask_id, 1.0)
    net.cfg = SimpleNamespace(pad_id=toy.tok.pad_id)  # as a length-aware Transformer: trim the padding
    result = evaluate_bound(net, objective, toy.ids, toy.tok.real_tokens(toy.ids), time_samples=64, seed=3)
    exact = sum(nll(toy, row) for row in range(len(toy.records))) / math.log(2) / result["tokens"]
    assert result["tokens"] == int((toy.lengths + 1).sum())  # residues + end marker
    assert abs(result["bits_per_token"] - exact) < 4 * result["mc_standard_error"] + 1e-9
    one_draw = evaluate_bound(net, objective, toy.ids, toy.tok.real_tokens(toy.ids), time_samples=1, seed=3)
    assert "mc_standard_error" not in one_draw  # not estimable from one draw per sequence; never a 0


class ExactUniformRecordNet(torch.nn.Module):
    """The exact concrete score of the uniform process on the letters (support R) of RecordToy:
    s_y = p_t(x with position i set to y) / p_t(x), by enumeration of the records of x's length."""

    time_conditioned = True

    def __init__(self, toy: RecordToy):
        super().__init__()
        self.toy = toy

    def length_log_probs(self):
        return torch.log(self.toy.p_length())

    def p_t(self, xt: torch.Tensor, sbar: float) -> torch.Tensor:
        toy, keep = self.toy, math.exp(-sbar)
        K = keep * torch.eye(toy.R, dtype=torch.float64) + (1 - keep) / toy.R  # K[a, b] = P(a | b)
        out = torch.zeros(len(xt), dtype=torch.float64)
        for row, x in enumerate(xt):
            n = int((x == toy.tok.eos_id).nonzero()[0]) - 1
            for rec in (toy.lengths == n).nonzero().flatten():
                a, b = x[1 : n + 1], toy.ids[rec, 1 : n + 1]
                out[row] += toy.p[rec] * K[a, b].prod()
        return out

    def forward(self, xt, sbar):
        toy = self.toy
        out = torch.full((*xt.shape, toy.V), -torch.inf, dtype=torch.float64)
        for row in range(len(xt)):
            base = self.p_t(xt[row : row + 1], float(sbar[row]))
            moving = (xt[row] < toy.R).nonzero().flatten()
            for i, y in itertools.product(moving.tolist(), range(toy.R)):
                other = xt[row : row + 1].clone()
                other[0, i] = y
                out[row, i, y] = torch.log(self.p_t(other, float(sbar[row])) / base)
        return out


def test_uniform_bound_is_the_exact_nll_of_every_record():
    """The uniform process on the letters only (the markers never move): the exact expectation over
    every noised record x_t of the same length, and the integral over total noise by quadrature."""
    toy = RecordToy(max_n=2)
    schedule = Geometric()
    objective = record_objective(ScoreEntropy, toy, schedule, Uniform)
    net = ExactUniformRecordNet(toy)
    process = objective.process

    def expected_integrand(row, sbar, sigma):
        n = int(toy.lengths[row])
        xt = toy.ids[toy.lengths == n]  # every noised state of this length
        x0 = toy.ids[row].expand_as(xt)
        weight = process.transition_matrix(sbar.item())[xt, x0].prod(-1)  # markers: probability 1
        out = net(xt, sbar.expand(len(xt)))
        per_seq = objective.position_loss(out, xt, x0, sbar.expand(len(xt), 1), sigma.expand(len(xt), 1))
        return (weight * per_seq.sum(-1)).sum().item()

    k = 400
    mid = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    for row in range(len(toy.records)):
        total = sum(expected_integrand(row, schedule.total(t), schedule.rate(t)) for t in mid) / k
        below = sum(expected_integrand(row, schedule.smin * u, torch.tensor(1.0)) for u in mid[::20]) / (k // 20)
        total += below * schedule.smin + objective.length_nll(net, toy.ids[row][None]).item()
        assert abs(total - nll(toy, row)) < 5e-4, (toy.records[row], total, nll(toy, row))


def test_d3pm_bound_approaches_the_nll_of_records():
    toy = RecordToy()
    objective = record_objective(D3PM, toy, steps=500)
    net = ExactRecordNet(toy, objective.process.mask_id, 1.0)
    for row in [1, 9]:
        x0 = toy.ids[row].expand(20_000, -1)
        losses = objective.loss(net, x0, generator=torch.Generator().manual_seed(row)) + objective.length_nll(net, x0)
        mean, se = losses.double().mean().item(), losses.double().std().item() / math.sqrt(len(losses))
        # the factorised reverse step costs O(1/T) in the bound; 4 s.e. for the Monte-Carlo part
        assert nll(toy, row) - 4 * se <= mean <= nll(toy, row) + 4 * se + 0.02, (mean, se, nll(toy, row))


# --- sampling ---------------------------------------------------------------------------------------

N = 20_000


def sample_records(toy, objective, net, steps, use_cache=True, seed=0):
    """As `ddlm sample` does for a length-aware run: n ~ p(n) from the head, then the frame held."""
    g = torch.Generator().manual_seed(seed)
    lengths = draw_lengths(net.length_log_probs(), N, 1, toy.max_n, g)
    clamp, values = toy.tok.frame(lengths, toy.L)
    spec = SampleSpec(steps=steps, rule=TauLeaping(), use_cache=use_cache)
    return generate(net, objective, N, toy.L, spec, clamp=clamp, clamp_values=values, generator=g).tokens


def tv_to_records(toy, samples) -> float:
    counts = torch.bincount(toy.index(samples), minlength=len(toy.records)).double()
    return 0.5 * (counts / counts.sum() - toy.p).abs().sum().item()


@pytest.mark.parametrize("cls,scale", [(ScoreEntropy, 2.0), (MDLM, 1.0)], ids=["sedd", "mdlm"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["clocked", "stepwise"])
def test_sampled_records_follow_the_exact_distribution(cls, scale, use_cache):
    """Every sample is a well-formed record; over 20k samples the TV to p is within sampling noise
    (expected TV of an exact sampler over 14 records at n = 20k: about 0.01)."""
    toy = RecordToy()
    objective = record_objective(cls, toy, LogLinear())
    samples = sample_records(toy, objective, ExactRecordNet(toy, objective.process.mask_id, scale), 256, use_cache)
    assert all(toy.tok.decode(row)[1] for row in samples[:2000])
    assert tv_to_records(toy, samples) < 0.03


class WidthRecorder(ExactRecordNet):
    """ExactRecordNet declared blind to padding, as a length-aware Transformer is; notes each call's width."""

    def __init__(self, toy: RecordToy, mask_id: int, scale: float):
        super().__init__(toy, mask_id, scale)
        self.cfg, self.widths = SimpleNamespace(pad_id=toy.tok.pad_id), []

    def forward(self, xt, sbar=None):
        self.widths.append(xt.shape[1])
        return super().forward(xt, sbar)


@pytest.mark.parametrize("use_cache", [True, False], ids=["clocked", "stepwise"])
def test_batches_trimmed_to_their_records_follow_the_exact_distribution(use_cache):
    """`sample_many` sorts the frames by length and runs each batch only up to its longest record: the
    samples come back in the frames' order, well formed, and over 20k samples within the same TV."""
    toy = RecordToy()
    objective = record_objective(MDLM, toy, LogLinear())
    net = WidthRecorder(toy, objective.process.mask_id, 1.0)
    lengths = draw_lengths(net.length_log_probs(), N, 1, toy.max_n, torch.Generator().manual_seed(0))
    clamp, values = toy.tok.frame(lengths, toy.L)
    spec = SampleSpec(steps=256, use_cache=use_cache, clamp=clamp, clamp_values=values, batch_size=2000,
                      pad_id=toy.tok.pad_id)  # fmt: skip
    samples, _, _ = sample_many(net, objective, N, toy.L, spec, seed=1, device="cpu")
    assert min(net.widths) < toy.L  # batches of short records ran in a shorter window
    assert torch.equal(torch.where(clamp, samples, values), values)  # row i kept frame i
    assert all(toy.tok.decode(row)[1] for row in samples[:2000])
    assert tv_to_records(toy, samples) < 0.03


def test_record_tv_bound_has_power():
    """A model that knows the length but ignores the unmasked letters fails the same bound."""
    toy = RecordToy()
    objective = record_objective(MDLM, toy, LogLinear())
    blind = ExactRecordNet(toy, objective.process.mask_id, 1.0, blind=True)
    assert tv_to_records(toy, sample_records(toy, objective, blind, 256)) > 0.03


# --- infilling with gaps of unknown length ------------------------------------------------------------


def infill_frames(toy, template_text):
    """(arrangements, clamp, values): every choice of the template's gap lengths and its frame, the given
    residues and markers held, each gap's positions free."""
    template = parse_template(template_text, "AB")
    arrangements = template.arrangements(toy.max_n)
    layouts = [template.layout(a) for a in arrangements]
    values = toy.tok.encode_padded([t.replace("_", "A") for t in layouts], toy.L)
    clamp = torch.ones_like(values, dtype=torch.bool)
    for row, layout in enumerate(layouts):
        clamp[row, [i + 1 for i, c in enumerate(layout) if c == "_"]] = False
    return arrangements, clamp, values


def infill(toy, objective, net, template_text, seed=0):
    """As `ddlm infill` does: score every arrangement of the gaps, draw one per sample, fill its gaps."""
    arrangements, clamp, values = infill_frames(toy, template_text)
    g = torch.Generator().manual_seed(seed)
    chosen = choose_arrangements(arrangement_nll(net, objective, clamp, values, g), N, g)
    spec = SampleSpec(steps=256, rule=TauLeaping())
    result = generate(net, objective, N, toy.L, spec, clamp=clamp[chosen], clamp_values=values[chosen], generator=g)
    return [(arrangements[a], toy.tok.decode(row)[0]) for a, row in zip(chosen.tolist(), result.tokens, strict=True)]


def exact_infill_law(toy, template_text) -> dict:
    """p(gap lengths, record | the template's residues), every arrangement and filling enumerated."""
    template = parse_template(template_text, "AB")
    law = {}
    for a in template.arrangements(toy.max_n):
        layout = template.layout(a)
        for row, rec in enumerate(toy.records):
            if len(rec) == len(layout) and all(c in ("_", r) for c, r in zip(layout, rec, strict=True)):
                law[(a, rec)] = law.get((a, rec), 0.0) + toy.p[row].item()
    total = sum(law.values())
    return {k: v / total for k, v in law.items()}


@pytest.mark.parametrize("template", ["_{0,2}B_", "A_{1,3}", "_B_"])
def test_infill_with_gaps_matches_the_exact_conditional(template):
    toy = RecordToy(max_n=4)
    objective = record_objective(MDLM, toy, LogLinear())
    law = exact_infill_law(toy, template)
    got = infill(toy, objective, ExactRecordNet(toy, objective.process.mask_id, 1.0), template)
    counts = {}
    for key in got:
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(law)  # every sample keeps the template's residues
    tv = 0.5 * sum(abs(counts.get(k, 0) / len(got) - p) for k, p in law.items())
    assert tv < 0.03, (tv, law)


def test_infill_tv_bound_has_power():
    """A model that ignores the given residues (it knows the length) fails the same bound."""
    toy = RecordToy(max_n=4)
    objective = record_objective(MDLM, toy, LogLinear())
    law = exact_infill_law(toy, "_{0,2}B_")
    got = infill(toy, objective, ExactRecordNet(toy, objective.process.mask_id, 1.0, blind=True), "_{0,2}B_")
    counts = {}
    for key in got:
        counts[key] = counts.get(key, 0) + 1
    tv = 0.5 * sum(abs(counts.get(k, 0) / len(got) - law.get(k, 0.0)) for k in set(law) | set(counts))
    assert tv > 0.03


# Two gaps of unknown length: 'A', 0 to 2 residues, 'B', 0 to 2 residues, in records of at most 5.
TWO_GAPS = "A_{0,2}B_{0,2}"


def two_gap_law(toy) -> dict:
    """p((a, b), record | 'A' at position 1, 'B' at position a + 2), by enumeration of the records of
    length 2 + a + b that read A, a letters, B, b letters (the layout written out here, not the library's)."""
    law = {}
    for a, b in itertools.product(range(3), range(3)):
        if 2 + a + b > toy.max_n:
            continue
        for row, rec in enumerate(toy.records):
            if len(rec) == 2 + a + b and rec[0] == "A" and rec[a + 1] == "B":
                law[((a, b), rec)] = toy.p[row].item()
    total = sum(law.values())
    return {k: v / total for k, v in law.items()}


def gap_posterior(law: dict, arrangements: list) -> torch.Tensor:
    """[A] p(gap lengths | given residues), in the order of `arrangements`."""
    return torch.tensor([sum(p for (a, _), p in law.items() if a == arr) for arr in arrangements], dtype=torch.float64)


def chi_square(drawn: list, arrangements: list, posterior: torch.Tensor) -> tuple[float, float]:
    """(chi-squared of the drawn arrangements against the posterior, about its 99.99% point)."""
    counts = torch.tensor([drawn.count(a) for a in arrangements], dtype=torch.float64)
    expected = posterior * len(drawn)
    df = len(arrangements) - 1
    return ((counts - expected) ** 2 / expected).sum().item(), df + 5 * (2 * df) ** 0.5


@pytest.mark.parametrize("cls,scale", [(ScoreEntropy, 2.0), (MDLM, 1.0)], ids=["sedd", "mdlm"])
def test_two_gaps_are_scored_by_the_exact_posterior(cls, scale):
    """With two gaps, every pair of gap lengths (8 here) is scored -log p(n) - log p(given residues at
    their positions | n) = -log of the summed probability of the records that fit it, in any order of
    revealing the given residues (3e-7 apart, float rounding); a scorer that ignores the residues it has
    revealed (a product of marginals, 0.28 nats off at worst) or forgets p(n) (3.2 nats) is far off."""
    toy = RecordToy(max_n=5)
    objective = record_objective(cls, toy, LogLinear())
    arrangements, clamp, values = infill_frames(toy, TWO_GAPS)
    assert arrangements == [(a, b) for a in range(3) for b in range(3) if a + b <= 3]
    exact = torch.tensor([
        -math.log(sum(p for rec, p in zip(toy.records, toy.p.tolist(), strict=True)
                      if len(rec) == 2 + a + b and rec[0] == "A" and rec[a + 1] == "B"))
        for a, b in arrangements
    ], dtype=torch.float64)  # fmt: skip
    net = ExactRecordNet(toy, objective.process.mask_id, scale)
    for seed in range(3):
        scored = arrangement_nll(net, objective, clamp, values, torch.Generator().manual_seed(seed))
        assert (scored - exact).abs().max() < 1e-5, (seed, scored, exact)
    blind = ExactRecordNet(toy, objective.process.mask_id, scale, blind=True)
    assert (arrangement_nll(blind, objective, clamp, values, torch.Generator()) - exact).abs().max() > 0.2
    assert (scored - objective.length_nll(net, values) - exact).abs().max() > 3


def test_two_gap_infill_follows_the_exact_law():
    """Each sample draws its pair of gap lengths from the posterior and fills the gaps: over 20k samples
    the gap-length pairs pass a chi-squared test against the enumerated posterior (statistic 5.2 against
    25.7) and the (pair, record) law is within TV 0.03 (0.013)."""
    toy = RecordToy(max_n=5)
    objective = record_objective(MDLM, toy, LogLinear())
    law = two_gap_law(toy)
    got = infill(toy, objective, ExactRecordNet(toy, objective.process.mask_id, 1.0), TWO_GAPS)
    counts = {}
    for key in got:
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(law)  # every sample reads A, its first gap, B, its second gap
    tv = 0.5 * sum(abs(counts.get(k, 0) / len(got) - p) for k, p in law.items())
    assert tv < 0.03, tv
    arrangements = sorted({a for a, _ in law})
    statistic, threshold = chi_square([a for a, _ in got], arrangements, gap_posterior(law, arrangements))
    assert statistic < threshold, (statistic, threshold)


@pytest.mark.parametrize("wrong", ["blind-scorer", "no-length-term"])
def test_two_gap_choice_check_has_power(monkeypatch, wrong):
    """The same draw of 20k gap-length pairs from a wrong scoring fails the same chi-squared test (723
    and 13,300 against 25.7), and the pairs alone are further than TV 0.03 from the posterior (0.07,
    0.24), so the (pair, record) TV bound above fails too: a scorer that ignores the residues it has
    revealed, and one without -log p(n)."""
    toy = RecordToy(max_n=5)
    objective = record_objective(MDLM, toy, LogLinear())
    arrangements, clamp, values = infill_frames(toy, TWO_GAPS)
    net = ExactRecordNet(toy, objective.process.mask_id, 1.0, blind=wrong == "blind-scorer")
    if wrong == "no-length-term":
        monkeypatch.setattr(objective, "length_nll", lambda net, x0: torch.zeros(len(x0), dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    chosen = choose_arrangements(arrangement_nll(net, objective, clamp, values, g), N, g)
    drawn = [arrangements[i] for i in chosen.tolist()]
    posterior = gap_posterior(two_gap_law(toy), arrangements)
    statistic, threshold = chi_square(drawn, arrangements, posterior)
    frequencies = torch.tensor([drawn.count(a) for a in arrangements], dtype=torch.float64) / len(drawn)
    assert statistic > threshold and 0.5 * (frequencies - posterior).abs().sum() > 0.03, statistic


# --- the CLI: every objective well formed at every step count; the flags' errors ---------------------

OBJECTIVES = {
    "sedd": [],
    "sedd-uniform": ["--process", "uniform"],
    "mdlm": ["--objective", "mdlm"],
    "d3pm": ["--objective", "d3pm", "--diffusion-steps", "50"],
    "d3pm-uniform": ["--objective", "d3pm", "--process", "uniform", "--diffusion-steps", "50"],
    "bd3lm": ["--objective", "bd3lm", "--diffusion-block", "2"],
}


@pytest.fixture(scope="module", params=list(OBJECTIVES), ids=list(OBJECTIVES))
def record_run(request, make_run):
    argv = OBJECTIVES[request.param]
    flags = {flag.lstrip("-").replace("-", "_"): value for flag, value in zip(argv[::2], argv[1::2], strict=True)}
    return make_run(steps=6, samples=0, eval_every=100, **FAMILY_RUN, **flags)


def test_every_sample_is_well_formed(record_run, capsys):
    for steps in (8, 64, 1024):
        result = json_out(capsys, ["sample", str(record_run), "--n", "6", "--steps", str(steps), "--json", "--quiet"])
        assert all(result["valid"]), (steps, result)
    result = json_out(capsys, ["sample", str(record_run), "--n", "4", "--length", "7", "--json", "--quiet"])
    assert all(result["valid"]) and [len(s) for s in result["samples"]] == [7] * 4
    result = json_out(capsys, ["sample", str(record_run), "--n", "8", "--length", "5:9", "--json", "--quiet"])
    assert all(result["valid"]) and all(5 <= len(s) <= 9 for s in result["samples"])


@pytest.fixture(scope="module")
def length_run(make_run):
    return make_run(steps=2, samples=0, eval_every=100, **FAMILY_RUN)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["sample", "--length", "0"], "--length"),
        (["sample", "--length", "9:3"], "--length"),
        (["sample", "--length", "49"], "--length 49:49: this model holds 1 to 48 residues"),
        (["sample", "--length", "40:60"], "--length 40:60"),
        (["infill", "--template", "MK_{8,3}V"], "the gap at position 3, '_{8,3}': MIN 8 is greater than MAX 3"),
        (["infill", "--template", "MK_{x}V"], "the gap at position 3, '_{x}'"),
        (["infill", "--template", "MK_{3V"], "the gap at position 3 is not closed"),
    ],
)
def test_length_and_gap_errors_name_the_flag(length_run, capsys, argv, needle):
    command, *flags = argv
    with pytest.raises(SystemExit) if flags[-1] in ("0", "9:3") else contextlib.nullcontext() as exit_:
        code = main([command, str(length_run), *flags, "--quiet"])
    code = exit_.value.code if exit_ is not None else code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
