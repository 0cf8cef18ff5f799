"""The Python API (`ddlm.load` -> sample, infill, score) and the steering flags of `ddlm sample` / `infill`."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import json_out, run_cli
from toy import ExactRecordNet, RecordToy

import ddlm
from ddlm.api import sequence_bits
from ddlm.cli import main
from ddlm.errors import UserError
from ddlm.objectives import MDLM
from ddlm.processes import Absorbing
from ddlm.schedules import LogLinear


@pytest.fixture(scope="module")
def model(tiny_run):
    return ddlm.load(tiny_run)


def test_import_ddlm_stays_cheap():
    code = "import sys, ddlm; assert 'torch' not in sys.modules; ddlm.load; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_sample_with_a_callable_reward_and_particles(model):
    count_k = lambda texts: [t.count("K") for t in texts]  # noqa: E731
    out = model.sample(4, steps=8, reward=count_k, particles=3, reward_temperature=0.5, seed=3)
    assert len(out.texts) == 4 and all(out.valid) and out.particles == 3
    assert out.rewards == [float(t.count("K")) for t in out.texts]
    assert out.nfe > 8 and out.seconds > 0  # three particles' evaluations per sample
    again = model.sample(4, steps=8, reward=count_k, particles=3, reward_temperature=0.5, seed=3)
    assert again.texts == out.texts
    plain = model.sample(3, steps=8, length=(20, 22))
    assert plain.rewards is None and all(20 <= len(t) <= 22 for t in plain.texts)
    ranked = model.sample(3, steps=8, length=(20, 22), reward="gravy", particles=2, order="top-margin", remask=True)
    assert all(ranked.valid) and all(20 <= len(t) <= 22 for t in ranked.texts) and len(ranked.rewards) == 3


def test_infill_with_a_reward_keeps_the_template(model):
    out = model.infill("MK_{2,4}GG", 3, steps=8, reward="regex:KK", particles=2, pick="best", resample="never")
    for text, gaps in zip(out.texts, out.gap_lengths, strict=True):
        assert text.startswith("MK") and text.endswith("GG") and len(text) == 4 + gaps[0]
    assert out.rewards == [1.0 if "KK" in t else 0.0 for t in out.texts]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"reward": lambda texts: [math.nan] * len(texts), "particles": 2}, "returned nan"),
        ({"reward": lambda texts: 1 / 0}, "raised ZeroDivisionError"),
        ({"reward": "sudoku"}, "reads sudoku samples; this is a protein run"),
        ({"reward": "charge", "particles": 0}, "--particles 0"),
        ({"particles": 2}, "--particles and --pick need --reward"),
        ({"sampler": "leapfrog"}, "--sampler leapfrog: unknown step rule"),
        ({"order": "sideways"}, "--order sideways: unknown unmasking order"),
        ({"top_p": 0.0}, "--top-p 0.0"),
        ({"steps": 8.0}, "--steps 8.0: give a whole number"),
        ({"reward": "charge", "reward_temperature": 10**400}, "--reward-temperature 1000"),
        ({"reward": "charge", "resample": "sometimes"}, "--resample sometimes"),
        ({"reward": "charge", "pick": "worst"}, "--pick worst"),
        ({"remask_rate": 0.5, "order": "top-margin"}, "with --order use --remask"),
    ],
)
def test_api_mistakes_are_one_line_user_errors(model, kwargs, needle):
    with pytest.raises(UserError) as e:
        model.sample(2, **{"steps": 4, **kwargs})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_option_is_a_type_error(model):
    with pytest.raises(TypeError):
        model.sample(2, stepz=4)


def test_score_is_the_bound_per_sequence(model, tiny_run):
    """Per-sequence bits that average, per token, to `ddlm eval`'s figure within Monte-Carlo error."""
    from ddlm.data.proteins import load_heldout

    _, heldout = load_heldout(tiny_run, 48)
    bits = model.score(heldout, time_samples=16)
    assert len(bits) == len(heldout) and all(b > 0 for b in bits)
    per_token = sum(bits) / sum(len(s) + 1 for s in heldout)
    ours = ddlm.api.Session.start(tiny_run)
    from ddlm.evaluate.likelihood import evaluate_bound

    heldout_ids = ours.domain.heldout()
    reference = evaluate_bound(
        ours.loaded.net, ours.loaded.objective, heldout_ids, ours.domain.tokenizer().real_tokens(heldout_ids), 16
    )
    assert abs(per_token - reference["bits_per_token"]) < 5 * reference["mc_standard_error"] + 0.01
    with pytest.raises(UserError, match="score: character 'Z'"):
        model.score(["MKZ"])


def test_sequence_bits_is_the_exact_nll_for_exact_conditionals():
    """With the toy's exact conditionals and length head, each record's bound is -log2 p(record) (the
    absorbing bound is exact for exact conditionals, in every order); a context-blind model is not."""
    toy = RecordToy(max_n=3)
    objective = MDLM(Absorbing(toy.V, support=toy.R), LogLinear())
    ids = toy.ids
    exact = -torch.log2(toy.p)
    bits = sequence_bits(ExactRecordNet(toy, objective.process.mask_id, 1.0), objective, ids, 256, 0, "cpu")
    blind = sequence_bits(
        ExactRecordNet(toy, objective.process.mask_id, 1.0, blind=True), objective, ids, 256, 0, "cpu"
    )
    assert (bits - exact).abs().max() < 0.05 < (blind - exact).abs().max()


def test_cli_sample_json_reports_rewards_and_cost(tiny_run, capsys):
    argv = ["sample", str(tiny_run), "--n", "3", "--steps", "8", "--reward", "charge", "--particles", "2"]
    result = json_out(capsys, [*argv, "--json", "--quiet", "--remask-rate", "0.5"])
    assert len(result["rewards"]) == 3 and result["particles"] == 2
    assert result["nfe"] > 0 and result["seconds"] > 0 and result["sequences_per_second"] > 0
    from ddlm.guidance.rewards import parse_reward

    assert result["rewards"] == pytest.approx(parse_reward("charge")(result["samples"]).tolist())


def test_cli_reward_that_fails_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def f(texts):\n    return [float('nan')] * len(texts)\n")
    out = tmp_path / "out.fa"
    code = main(["infill", str(tiny_run), "--template", "MK___", "--reward", f"py:{tmp_path / 'bad.py'}:f",
                 "--steps", "4", "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "returned nan" in err and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["hmm:", "regex:(", "hmm:/no/such.hmm", "py:nomodule", "colour"])
def test_malformed_reward_spec_exits_2_with_one_line_and_writes_nothing(tiny_run, tmp_path, spec):
    out = tmp_path / "samples.fa"
    proc = run_cli("sample", str(tiny_run), "--reward", spec, "--out", str(out), "--n", "2", "--steps", "4")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"ddlm sample: error: --reward {spec}")
    assert "Traceback" not in proc.stderr and not out.exists()


STEERING_FLAGS = {"--particles": 8, "--reward-temperature": None, "--remask-rate": None, "--reward": None}


def test_steering_flag_values_succeed_or_are_one_line(tiny_run):
    """Garbage values of the steering flags (test_fuzz.py's strategy): exit 0, or 2 with one error line."""
    from hypothesis import assume, given
    from hypothesis import strategies as st
    from test_fuzz import cheap, fuzz, garbage, run

    @fuzz(120)
    @given(flag=st.sampled_from(sorted(STEERING_FLAGS)), value=garbage)
    def check(flag, value):
        assume(not value.startswith("py:"))  # a py: reward runs the user's code: never a random module's
        argv = ["sample", str(tiny_run), "--quiet", "--json", "--n", "2", "--steps", "4"]
        if flag != "--reward":
            argv += ["--reward", "charge"]
        argv.append(f"{flag}={value}")
        if cheap(argv, STEERING_FLAGS, flag):
            run(argv)

    check()
