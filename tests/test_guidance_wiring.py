"""Classifier-free and predictor guidance reach the samplers through `ddlm sample`, `ddlm infill` and
the Python API: the steered network is the one called, the flags combine with each other and with
particles, and a mistake is one line. (The guidance maths is tested on exact toys in test_cfg.py and
test_predictor.py; here, the wiring.)"""

from __future__ import annotations

import json

import pytest
from conftest import FAMILY_RUN, json_out

import ddlm
from ddlm.cli import main
from ddlm.guidance.cfg import Guided
from ddlm.guidance.predictor import PredictorGuided


@pytest.fixture(scope="module")
def labelled_run(make_run, tmp_path_factory):
    table = tmp_path_factory.mktemp("labels") / "labels.tsv"
    table.write_text("".join(f"seq{i}\t{'odd' if i % 2 else 'even'}\n" for i in range(300)))
    return make_run(steps=6, eval_every=6, checkpoint_every=6, samples=0, labels=str(table), **FAMILY_RUN)


@pytest.fixture(scope="module")
def predictor_dir(labelled_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "charge"
    argv = ["train-predictor", str(labelled_run), "--out", str(out), "--property", "charge>=0", "--steps", "3",
            "--preset", "tiny", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture
def calls(monkeypatch):
    """How often each wrapper's forward ran."""
    counts = {"cfg": 0, "predictor": 0}
    for name, cls in (("cfg", Guided), ("predictor", PredictorGuided)):
        forward = cls.forward

        def counted(self, *args, _forward=forward, _name=name, **kwargs):
            counts[_name] += 1
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counted)
    return counts


def test_the_api_samples_through_both_wrappers(labelled_run, predictor_dir, calls):
    model = ddlm.load(labelled_run, precision="fp32")
    plain = model.sample(3, steps=8, seed=1)
    assert calls == {"cfg": 0, "predictor": 0}
    steered = model.sample(3, steps=8, seed=1, condition="odd", cfg=2.0, predictor=str(predictor_dir), guidance=3.0)
    assert calls["cfg"] > 0 and calls["predictor"] > 0 and all(steered.valid) and all(plain.valid)


def test_cli_and_api_agree(labelled_run, capsys):
    capsys.readouterr()
    argv = ["sample", str(labelled_run), "--n", "3", "--steps", "8", "--seed", "2", "--condition", "even", "--cfg",
            "1.5", "--reward", "charge", "--particles", "2", "--json", "--quiet", "--precision", "fp32"]  # fmt: skip
    assert main(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    api = ddlm.load(labelled_run, precision="fp32").sample(
        3, steps=8, seed=2, condition="even", cfg=1.5, reward="charge", particles=2
    )
    assert cli["samples"] == api.texts and cli["rewards"] == api.rewards


def test_infill_takes_guidance(labelled_run, predictor_dir, calls, capsys):
    capsys.readouterr()
    argv = ["infill", str(labelled_run), "--template", "M_{2,4}KV___", "--n", "2", "--steps", "8", "--condition",
            "odd", "--predictor", str(predictor_dir), "--guide-approx", "taylor", "--json", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(t.startswith("M") and t[-5:-3] == "KV" for t in out["samples"]) and calls["predictor"] > 0
    assert out["predictor"]["calls"] > 0 and out["predictor"]["inputs_per_sample"] > 0  # its cost, reported


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--condition", "blue"], "--condition blue: not a label of"),
        (["--cfg", "2"], "--cfg needs --condition LABEL"),
        (["--guidance", "2"], "--guidance needs --predictor DIR"),
    ],
)
def test_guidance_mistakes_are_one_line(labelled_run, capsys, flags, says):
    capsys.readouterr()
    assert main(["sample", str(labelled_run), "--n", "1", "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_the_api_checks_the_strength(labelled_run):
    model = ddlm.load(labelled_run)
    with pytest.raises(ddlm.errors.UserError, match="--cfg -1"):
        model.sample(1, condition="odd", cfg=-1)


@pytest.fixture(scope="module")
def sudoku_run(make_run):
    return make_run("sudoku", steps=6, batch_size=8, eval_every=3, samples=0)


def test_eval_sudoku_takes_reward_guided_particles(sudoku_run, capsys):
    argv = ["eval", str(sudoku_run), "--task", "sudoku", "--givens", "40", "--n", "4", "--steps", "8", "--json",
            "--quiet"]  # fmt: skip
    plain = json_out(capsys, argv)
    steered = json_out(
        capsys, [*argv, "--reward", "sudoku", "--particles", "4", "--resample", "never", "--pick", "best"]
    )
    assert plain["steering"] == {} and steered["steering"]["particles"] == "4"
    assert steered["nfe"] > plain["nfe"]  # nfe counts every particle of a puzzle
    remasked = json_out(capsys, [*argv, "--order", "top-margin", "--remask", "--reward", "sudoku", "--particles", "2"])
    assert remasked["steering"]["remask"] == "True" and remasked["order"] == "top-margin"
    assert main([*argv, "--order", "confidence", "--remask"]) == 2  # the flag reaches the order policy
    assert "--order confidence commits tokens for good" in capsys.readouterr().err
    assert main([*argv, "--reward", "charge"]) == 2  # a protein reward on a Sudoku run
    assert "charge" in capsys.readouterr().err


def test_eval_proteins_takes_steering(labelled_run, capsys):
    argv = ["eval", str(labelled_run), "--task", "proteins", "--n", "4", "--steps", "8", "--json", "--quiet",
            "--reward", "charge", "--particles", "2", "--condition", "odd"]  # fmt: skip
    result = json_out(capsys, argv)
    assert result["settings"]["steering"] == {"reward": "charge", "particles": "2", "condition": "odd"}
    assert result["samples"]["well_formed"] == 1.0
