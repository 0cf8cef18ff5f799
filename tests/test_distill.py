"""Self-distillation through time (distill.py, `ddlm distill`): the student's target is the teacher's
two-step mixture, checked against an enumeration; the student is an ordinary run; bad requests are refused."""

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import json_out

from ddlm.cli import main
from ddlm.distill import SelfDistillation, halving_rounds, two_step_target
from ddlm.objectives import MDLM
from ddlm.processes import Absorbing
from ddlm.sampling import TauLeaping
from ddlm.schedules import LogLinear


class TableTeacher(torch.nn.Module):
    """A teacher whose prediction at each of the (V + 1)^L states is a fixed random table: unlike the
    exact conditionals, its second call need not average back to its first, so the target's mixture
    shows."""

    time_conditioned = False

    def __init__(self, V: int, L: int, seed: int):
        super().__init__()
        self.V, self.L = V, L
        g = torch.Generator().manual_seed(seed)
        self.logits = 2.0 * torch.randn((V + 1) ** L, L, V, generator=g, dtype=torch.float64)

    def forward(self, xt, sbar=None):
        return self.logits[(xt * (self.V + 1) ** torch.arange(self.L)).sum(-1)]

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x[None])[0], dim=-1)

    def probs_of(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, V] the prediction at each row of x."""
        return torch.softmax(self.forward(x), dim=-1)


def exact_two_step_target(teacher: TableTeacher, xt: torch.Tensor, keep_t: float, keep_mid: float) -> torch.Tensor:
    """E[target] by enumerating the teacher's first step from one state xt [L]: each masked position
    stays masked or becomes y (probability u p_T(y | xt), u = (keep_mid - keep_t) / (1 - keep_t) the
    absorbing reverse step of a normalised prediction, keep = e^-sbar); the target is the first
    prediction where the position unmasked, the teacher's prediction at the step's result elsewhere."""
    mask = teacher.V
    u = (keep_mid - keep_t) / (1 - keep_t)
    first = teacher.probs(xt)
    masked = (xt == mask).nonzero().squeeze(-1).tolist()
    expected = torch.zeros(teacher.L, teacher.V, dtype=torch.float64)
    for outcome in itertools.product([None, *range(teacher.V)], repeat=len(masked)):
        x_mid, p = xt.clone(), 1.0
        for i, y in zip(masked, outcome, strict=True):
            if y is None:
                p *= 1 - u
            else:
                x_mid[i] = y
                p *= u * first[i, y].item()
        second = teacher.probs(x_mid)
        for i, y in zip(masked, outcome, strict=True):
            expected[i] += p * (first[i] if y is not None else second[i])
    return expected


@pytest.mark.parametrize("state", [[3, 3, 3], [1, 3, 3], [3, 0, 3]])
def test_two_step_target_is_the_teachers_two_step_mixture(state):
    """The mean of the sampled targets equals the enumerated mixture within Monte-Carlo error, and the
    one-call target p_T(. | x_t) (what a student ignoring the teacher's second step would learn) is
    rejected by the same bound."""
    V, L = 3, 3
    schedule = LogLinear(eps=0.0)
    objective = MDLM(Absorbing(V), schedule)
    teacher = TableTeacher(V, L, seed=1)
    n = 40_000
    xt = torch.tensor(state).expand(n, -1)
    t, t_mid = torch.full((n,), 0.9, dtype=torch.float64), torch.full((n,), 0.35, dtype=torch.float64)
    target = two_step_target(objective, teacher, xt, t, t_mid, TauLeaping(), torch.Generator().manual_seed(0))
    target = target.double()
    mean, se = target.mean(0), target.std(0) / math.sqrt(n)
    keep = torch.exp(-schedule.total(torch.tensor([0.9, 0.35], dtype=torch.float64)))
    exact = exact_two_step_target(teacher, torch.tensor(state), keep[0].item(), keep[1].item())
    masked = torch.tensor(state) == V
    assert (mean[masked] - exact[masked]).abs().max() < 5 * se[masked].max() + 1e-4, (mean, exact)
    one_call = teacher.probs(torch.tensor(state))
    assert (one_call[masked] - exact[masked]).abs().max() > 10 * se[masked].max()


class ExactTeacher(TableTeacher):
    """The exact conditionals of one random distribution over V^L: at a state x its prediction at a
    masked position i is p(x_i | the unmasked positions of x)."""

    def __init__(self, V: int, L: int, seed: int):
        torch.nn.Module.__init__(self)
        self.V, self.L = V, L
        g = torch.Generator().manual_seed(seed)
        joint = torch.softmax(2.0 * torch.randn(V**L, generator=g, dtype=torch.float64), 0).reshape((V,) * L)
        self.logits = torch.zeros((V + 1) ** L, L, V, dtype=torch.float64)
        for state in itertools.product(range(V + 1), repeat=L):
            index = sum(x * (V + 1) ** k for k, x in enumerate(state))
            masked = [k for k in range(L) if state[k] == V]
            given = joint[tuple(slice(None) if x == V else x for x in state)]  # one dim per masked position
            for d, i in enumerate(masked):
                others = tuple(e for e in range(len(masked)) if e != d)
                conditional = given.sum(dim=others) if others else given  # dim=() would sum them all
                self.logits[index, i] = (conditional / conditional.sum()).log()


@pytest.mark.parametrize("state,exact_mean", [([2, 2], True), ([0, 2, 2], True), ([2, 2, 2], False)])
def test_an_exact_teachers_two_steps_average_back_to_its_one_step(state, exact_mean):
    """Why a round's headroom is small: for a teacher that predicts the exact conditionals of one
    distribution the two-step mixture is its own one-call prediction (the tower property) whenever its
    first step can reveal at most one other position, and only slightly off it when it reveals two at
    once (drawn independently, not jointly); the table teacher's mixture is far off."""
    V, L = 2, len(state)
    keep = torch.exp(-LogLinear(eps=0.0).total(torch.tensor([0.9, 0.35], dtype=torch.float64)))
    xt = torch.tensor(state)
    masked = xt == V

    def headroom(teacher):
        mixture = exact_two_step_target(teacher, xt, keep[0].item(), keep[1].item())[masked]
        return float((mixture * (mixture / teacher.probs(xt)[masked]).log()).sum(-1).max())

    exact, table = headroom(ExactTeacher(V, L, seed=3)), headroom(TableTeacher(V, L, seed=3))
    assert table > 1e-3
    if exact_mean:
        assert exact < 1e-12
    else:
        assert 1e-6 < exact < 0.1 * table


class Recorder(torch.nn.Module):
    """Wraps a table network and records the (x, sbar) of every call."""

    time_conditioned = False

    def __init__(self, inner: TableTeacher):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, xt, sbar=None):
        self.calls.append((xt.clone(), sbar.clone()))
        return self.inner(xt, sbar)


def distillation_figures(objective, distiller, x0: torch.Tensor, seed: int = 0) -> dict:
    """Run `SelfDistillation.training_loss` once with table teacher and student and check it against the
    module docstring, computed here by hand: pairs (t, t_mid) = (t_2j, t_2j+1) of the teacher's grid
    linspace(1, 0, K + 1); x_t the forward process at t (a position masked with probability (1 - eps) t);
    the teacher's first step unmasking a masked position with probability (t - t_mid) / t; the target
    p_T(. | x_t) where that step unmasked, p_T(. | x_mid) where the position stayed masked; the loss
    sum over the masked positions of x_t of KL(target || p_S(. | x_t)). Returns the figures: the largest
    gap of the loss to that value, to the reversed KL and to the KL summed over every position; whether
    the calls' times paired as stated; the z-scores of the masked and unmasked fractions."""
    teacher, student = distiller.teacher, Recorder(TableTeacher(3, 3, seed=2))
    loss = distiller.training_loss(student, x0, generator=torch.Generator().manual_seed(seed)).double()
    (xt, sbar), (x_mid, sbar_mid) = teacher.calls
    (x_student, sbar_student) = student.calls[0]
    eps, K = objective.schedule.eps, distiller.teacher_steps
    grid = [1 - i / K for i in range(K + 1)]
    totals = torch.tensor([-math.log(1 - (1 - eps) * t) for t in grid], dtype=torch.float64)

    def grid_step(sbar):  # the index of the grid time whose total noise is sbar, -1 if none
        gap, step = (sbar.double()[:, None] - totals[None]).abs().min(-1)
        return torch.where(gap < 1e-4, step, -1)

    step, step_mid = grid_step(sbar), grid_step(sbar_mid)
    paired = bool((step % 2 == 0).all() and (step_mid == step + 1).all() and len(step.unique()) == K // 2)
    paired &= torch.equal(x_student, xt) and torch.equal(sbar_student, sbar)
    mask = objective.process.mask_id
    masked, still = xt == mask, x_mid == mask
    assert torch.equal(torch.where(masked, x0, xt), x0) and not (still & ~masked).any()
    assert torch.equal(torch.where(masked, xt, x_mid), xt)  # the first step keeps x_t's unmasked tokens
    t = torch.tensor([grid[i] if i >= 0 else math.nan for i in step.tolist()], dtype=torch.float64)[:, None]
    t_mid = torch.tensor([grid[i] if i >= 0 else math.nan for i in step_mid.tolist()], dtype=torch.float64)[:, None]

    def z(hits, p, among):
        p = p.expand_as(hits)[among]
        return abs((hits[among].double() - p).sum().item()) / math.sqrt((p * (1 - p)).sum().item())

    mask_z = z(masked, (1 - eps) * t, torch.ones_like(masked))
    unmask_z = z(~still, (t - t_mid) / t, masked)
    first, second, log_q = teacher.inner.probs_of(xt), teacher.inner.probs_of(x_mid), student.inner.probs_of(xt).log()
    target = torch.where((masked & ~still)[..., None], first, second)
    kl = (target * (target.log() - log_q)).sum(-1)
    reverse = (log_q.exp() * (log_q - target.log())).sum(-1)
    right = torch.where(masked, kl, 0.0).sum(-1)
    return {
        "gap": (loss - right).abs().max().item(),
        "reversed": (loss - torch.where(masked, reverse, 0.0).sum(-1)).abs().max().item(),
        "every position": (loss - kl.sum(-1)).abs().max().item(),
        "paired": paired,
        "mask_z": mask_z,
        "unmask_z": unmask_z,
    }


def distillation_setup(teacher_steps: int = 4, n: int = 4000):
    V, L = 3, 3
    objective = MDLM(Absorbing(V), LogLinear())
    distiller = SelfDistillation(objective, Recorder(TableTeacher(V, L, seed=1)), teacher_steps)
    x0 = torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(5))
    return objective, distiller, x0


def test_distillation_loss_is_the_kl_from_the_two_step_target():
    """The loss is KL(target || student) summed over the masked positions of x_t, with the teacher's
    steps paired (t_2j, t_2j+1), x_t drawn at t_2j and the student read at x_t (distill.py's docstring),
    to float rounding (2e-6); the reversed KL and the sum over every position are 6.3 and 10.5 nats away
    at the worst row."""
    figures = distillation_figures(*distillation_setup())
    assert figures["gap"] < 1e-4 and figures["paired"], figures
    assert figures["mask_z"] < 4 and figures["unmask_z"] < 4, figures
    assert figures["reversed"] > 0.1 and figures["every position"] > 0.1, figures


@pytest.mark.parametrize("wrong", ["reversed-kl", "pairs-shifted", "noised-at-t-mid", "student-at-t-mid"])
def test_distillation_loss_check_rejects_wrong_variants(monkeypatch, wrong):
    """Each wrong variant fails the check above: the KL reversed (the loss off by up to 6.3 nats in a
    row), the pairs shifted by one step to (t_2j+1, t_2j+2) (the calls' times off the grid's pairs), x_t
    drawn at t_mid instead of t (the masked fraction 78 s.e. off), the student read at t_mid (for this
    time-independent MDLM the value is unchanged; the call's time shows it)."""
    from ddlm import distill

    objective, distiller, x0 = distillation_setup()
    if wrong == "reversed-kl":
        kl = distill.categorical_kl
        monkeypatch.setattr(distill, "categorical_kl", lambda p, log_q: kl(log_q.exp(), p.clamp(min=1e-30).log()))
    elif wrong == "pairs-shifted":
        distiller.times = torch.cat([distiller.times[1:], distiller.times[-1:]])
    elif wrong == "noised-at-t-mid":
        totals = objective.schedule.total(distiller.times).float()
        perturb = objective.process.perturb

        def at_t_mid(x, sbar, generator):
            step = (sbar - totals).abs().argmin(-1)
            return perturb(x, totals[step + 1][:, None], generator)

        monkeypatch.setattr(objective.process, "perturb", at_t_mid)
    else:
        normalised = distill.normalised_scores

        def late(objective, net, xt, sbar):
            if isinstance(net, Recorder) and net.inner.logits is not distiller.teacher.inner.logits:
                sbar = objective.schedule.total(torch.full_like(sbar, 0.5, dtype=torch.float64)).float()
            return normalised(objective, net, xt, sbar)

        monkeypatch.setattr(distill, "normalised_scores", late)
    figures = distillation_figures(objective, distiller, x0)
    right = figures["gap"] < 1e-4 and figures["paired"] and figures["mask_z"] < 4 and figures["unmask_z"] < 4
    assert not right, figures


def test_halving_rounds():
    assert halving_rounds(1024, 16) == [1024, 512, 256, 128, 64, 32]
    assert halving_rounds(32, 16) == [32]
    for teacher, student in [(1024, 24), (16, 16), (48, 5)]:
        with pytest.raises(ValueError):
            halving_rounds(teacher, student)


def test_student_is_an_ordinary_run(tiny_run, tmp_path, capsys):
    """Two rounds 32 -> 16 -> 8: the student's config keeps the teacher's and adds its lineage; sample
    takes the student's 8 steps unless told (at most 9 calls a sequence), and eval reads it."""
    student = tmp_path / "student"
    argv = ["distill", str(tiny_run), "--out", str(student), "--steps", "8", "--teacher-steps", "32"]
    result = json_out(capsys, [*argv, "--train-steps", "3", "--quiet", "--json"])
    assert [r["teacher_steps"] for r in result["rounds"]] == [32, 16] and result["rounds"][-1]["train_steps"] == 3
    assert math.isfinite(result["heldout"]["bits_per_token"])
    teacher_config = json.loads((tiny_run / "config.json").read_text())
    config = json.loads((student / "config.json").read_text())
    lineage = config.pop("lineage")
    assert config["net"] == teacher_config["net"] and config["objective"] == teacher_config["objective"]
    assert lineage["steps"] == 8 and lineage["rounds_done"] == 2 and lineage["teacher_steps"] == 32
    sampled = json_out(capsys, ["sample", str(student), "--n", "4", "--json"])
    assert max(sampled["nfe"] if isinstance(sampled["nfe"], list) else [sampled["nfe"]]) <= 9
    assert all(sampled["valid"])
    taught = json_out(capsys, ["sample", str(tiny_run), "--n", "4", "--json"])  # 128 steps: more calls
    assert max(taught["nfe"] if isinstance(taught["nfe"], list) else [taught["nfe"]]) > 9
    assert math.isfinite(json_out(capsys, ["eval", str(student), "--time-samples", "1", "--json"])["bits_per_token"])


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--steps", "1024"], "fewer steps than its teacher's 1024"),
        (["--steps", "24"], "--steps 24"),
        (["--steps", "4", "--teacher-steps", "12"], "--steps 4"),
    ],
)
def test_distill_requests_that_cannot_be_met_are_refused(tiny_run, tmp_path, capsys, flags, needle):
    assert main(["distill", str(tiny_run), "--out", str(tmp_path / "s"), *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1
    assert not (tmp_path / "s").exists()


def test_distill_refuses_an_ar_run_and_a_missing_one(make_run, tmp_path, capsys):
    ar = make_run(objective="ar", steps=2, samples=0, max_len=48, batch_size=16)
    assert main(["distill", str(ar), "--out", str(tmp_path / "s"), "--steps", "16"]) == 2
    assert "this run is ar" in capsys.readouterr().err
    assert main(["distill", str(tmp_path / "nothing"), "--out", str(tmp_path / "s"), "--steps", "16"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_distill_from_changed_data_leaves_no_student_behind(make_run, family, tmp_path, capsys):
    """The teacher's data is checked after the student's directory is made: a refusal there removes
    it, so the same --out works once the data is back."""
    data = tmp_path / "family.fa"
    original = family.read_text()
    data.write_text(original)
    teacher = make_run(data=data, steps=2, samples=0)
    data.write_text(original + ">extra\nMKV\n")
    argv = ["distill", str(teacher), "--out", str(tmp_path / "s"), "--steps", "8", "--teacher-steps", "16"]
    assert main([*argv, "--train-steps", "1", "--quiet"]) == 2
    assert "has changed since the run was started" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    data.write_text(original)
    assert main([*argv, "--train-steps", "1", "--quiet", "--eval-time-samples", "1"]) == 0


def load_headroom_script():
    path = Path(__file__).parents[1] / "scripts" / "distill_headroom.py"
    spec = importlib.util.spec_from_file_location("distill_headroom", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headroom_splits_the_start_loss_and_matches_the_enumerated_mixture():
    """scripts/distill_headroom.py: start = irreducible + headroom (an identity for the sampled mean),
    and with many draws the headroom is KL(E[target] || teacher) from the enumeration; a student that
    is the enumerated mixture itself has (almost) no gap left, the teacher all of it."""
    headroom = load_headroom_script().headroom
    V, L = 3, 3
    schedule = LogLinear(eps=0.0)
    objective = MDLM(Absorbing(V), schedule)
    teacher = TableTeacher(V, L, seed=1)
    # a round 2 -> 1: x_t at t just below 1 is all mask (probability 1 - 1e-6 per position), t_mid = 1/2
    records = torch.zeros(4, L, dtype=torch.long)
    result = headroom(objective, teacher, teacher, 2, records, draws=4000, seed=0)
    assert result["start"] == pytest.approx(result["irreducible"] + result["headroom"], rel=1e-9)
    assert result["student_gap"] == pytest.approx(result["headroom"], rel=1e-9)  # the student is the teacher
    times = torch.tensor([1.0 - 1e-6, 0.5], dtype=torch.float64)
    keep = torch.exp(-schedule.total(times))
    all_masked = torch.full((L,), V)
    exact = exact_two_step_target(teacher, all_masked, keep[0].item(), keep[1].item())
    one_call = teacher.probs(all_masked)
    exact_headroom = float((exact * (exact / one_call).log()).sum(-1).mean()) / math.log(2)
    assert exact_headroom > 0.01  # the table teacher's second call does not average back to its first
    assert result["headroom"] == pytest.approx(exact_headroom, rel=0.05, abs=2e-3)

    class MixtureStudent(torch.nn.Module):  # predicts the enumerated mixture at the all-mask state
        time_conditioned = False

        def forward(self, xt, sbar=None):
            return exact.log().expand(len(xt), -1, -1)

    taught = headroom(objective, teacher, MixtureStudent(), 2, records, draws=4000, seed=0)
    assert taught["student_gap"] < 0.1 * result["headroom"]
