"""The CLI contract other issues build on: JSON shapes, nfe bound, infilling, errors with exit code 2."""

import contextlib
import json
import math

import pytest
from conftest import FAMILY_RUN, json_out, run_cli, train_argv

from ddlm.cli import main
from ddlm.data.proteins import RESIDUES


def test_train_writes_run_directory(tiny_run):
    for name in ("config.json", "split.json", "heldout.fa", "metrics.jsonl", "loss.png", "samples.fasta"):
        assert (tiny_run / name).is_file(), name
    assert any(tiny_run.glob("checkpoints/step-00000040.safetensors"))


def test_sample_json_no_mask_and_nfe_bound(tiny_run, capsys):
    result = json_out(capsys, ["sample", str(tiny_run), "--n", "16", "--steps", "1024", "--json", "--quiet"])
    assert set(result) >= {"samples", "nfe", "seconds"}
    assert len(result["samples"]) == 16
    length = 48 + 2
    assert result["nfe"] <= length + 1
    for s in result["samples"]:
        assert set(s) <= set(RESIDUES)  # decoded residues only: no mask, no marker


def test_no_cache_reruns_the_network_at_every_step(tiny_run, capsys):
    """Same law either way (the samplers are tested against the exact distribution in test_sampling);
    the cached sampler draws its random numbers in another order, so the samples differ."""
    argv = [
        "sample",
        str(tiny_run),
        "--n",
        "8",
        "--steps",
        "200",
        "--json",
        "--quiet",
        "--seed",
        "5",
        "--precision",
        "fp32",
    ]
    cached = json_out(capsys, argv)
    uncached = json_out(capsys, [*argv, "--no-cache"])
    for run in (cached, uncached):
        assert len(run["samples"]) == 8
    assert cached["nfe"] <= 51 < uncached["nfe"] <= 201


def test_infill_keeps_template(tiny_run, capsys):
    template = "M_VK__LL" + "A" * 10 + "____" + "G"
    result = json_out(capsys, ["infill", str(tiny_run), "--template", template, "--n", "6", "--json", "--quiet"])
    for sample in result["samples"]:
        assert len(sample) == len(template)
        for given, got in zip(template, sample, strict=True):
            if given != "_":
                assert got == given


def test_eval_json(tiny_run, capsys):
    result = json_out(capsys, ["eval", str(tiny_run), "--json", "--quiet", "--time-samples", "2"])
    assert result["bound"] == "nelbo" and result["tokens"] > 0 and result["time_samples"] == 2
    assert 0 < result["bits_per_token"] < 10 and result["mc_standard_error"] > 0


def test_resume_is_bitwise_identical(family, tmp_path):
    """10 + 10 steps with a resume in between equal 20 uninterrupted steps, bit for bit. A one-step
    warm-up: a run's warm-up is at most a tenth of its steps, and the 10-step run's horizon is 10."""
    from safetensors.torch import load_file

    common = dict(samples=0, eval_every=5, checkpoint_every=100, warmup=1, **FAMILY_RUN)
    assert main(train_argv(family, tmp_path / "a", steps=20, **common)) == 0
    assert main(train_argv(family, tmp_path / "b", steps=10, **common)) == 0
    assert main(train_argv(family, tmp_path / "b", steps=20, resume=True, **common)) == 0
    a = load_file(tmp_path / "a/checkpoints/step-00000020.safetensors")
    b = load_file(tmp_path / "b/checkpoints/step-00000020.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--data", "missing.fa", "--out", "{tmp}/r"], "missing.fa"),
        (
            ["train", "--data", "acyp", "--out", "{tmp}/r", "--objective", "mdlm", "--process", "uniform"],
            "--objective mdlm",
        ),
        (["train", "--data", "data.csv", "--out", "{tmp}/r"], "--data data.csv"),
        (["train", "--data", "acyp", "--out", "{tmp}/r", "--steps", "0"], "--steps"),
        (["sample", "{tmp}/nowhere"], "nowhere"),
        (["eval", "{tmp}"], "not a ddlm run directory"),
    ],
)
def test_user_errors_exit_2_without_traceback(tmp_path, args, needle):
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_records_are_named_or_skipped(tmp_path, capsys):
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok1\nMKVLA\n>bad1\nMKV1A\n>ok2\nMKKLA\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "bad.fa:3" in err and "bad1" in err and "position 4" in err


@pytest.mark.parametrize("template,needle", [("MK_Z_", "position 4"), ("M" * 49 + "_", "at most 48"), ("", "empty")])
def test_bad_templates(tiny_run, capsys, template, needle):
    assert main(["infill", str(tiny_run), "--template", template, "--quiet"]) == 2
    assert needle in capsys.readouterr().err


def test_existing_run_is_never_overwritten(tiny_run, family, capsys):
    before = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert main(["train", "--data", str(family), "--out", str(tiny_run), "--steps", "1"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == before


def test_pickle_checkpoints_are_refused(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really")
    assert main(["sample", str(tmp_path)]) == 2
    assert "pickle" in capsys.readouterr().err


@pytest.mark.slow
def test_help_for_every_command():
    for command in ("train", "sample", "infill", "eval", "distill", "bench", "report", "export"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "usage: ddlm " + command in result.stdout


@pytest.mark.parametrize(
    "flags,bound",
    [
        (["--objective", "mdlm"], "nelbo"),
        (["--objective", "d3pm", "--diffusion-steps", "50"], "nelbo"),
        (["--objective", "d3pm", "--process", "uniform", "--diffusion-steps", "50"], "nelbo"),
        (["--objective", "sedd", "--process", "uniform"], "nelbo"),
        (["--objective", "ar"], "exact"),
    ],
    ids=["mdlm", "d3pm-absorbing", "d3pm-uniform", "sedd-uniform", "ar"],
)
def test_every_objective_trains_evaluates_and_samples(family, tmp_path, capsys, flags, bound):
    run = tmp_path / "run"
    argv = [*train_argv(family, run, steps=6, samples=2, eval_every=3, **FAMILY_RUN), *flags]
    assert main(argv) == 0
    capsys.readouterr()
    result = json_out(capsys, ["eval", str(run), "--json", "--quiet", "--time-samples", "2", "--max-sequences", "8"])
    assert result["bound"] == bound and math.isfinite(result["bits_per_token"]) and result["bits_per_token"] > 0
    samples = json_out(capsys, ["sample", str(run), "--n", "3", "--steps", "20", "--json", "--quiet"])
    assert len(samples["samples"]) == 3


@pytest.mark.parametrize("order", ["random", "top-prob", "top-margin"])
def test_sample_with_order_and_remask(tiny_run, capsys, order):
    result = json_out(
        capsys,
        [
            "sample",
            str(tiny_run),
            "--n",
            "4",
            "--steps",
            "16",
            "--order",
            order,
            "--json",
            "--quiet",
            "--order-noise",
            "0.1",
        ],
    )
    assert len(result["samples"]) == 4 and result["nfe"] <= 17
    result = json_out(
        capsys,
        ["sample", str(tiny_run), "--n", "4", "--steps", "16", "--order", order, "--remask", "--json", "--quiet"],
    )
    assert len(result["samples"]) == 4


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--objective", "ar", "--process", "uniform"], "--objective ar"),
        (["--objective", "sedd", "--diffusion-steps", "10"], "--diffusion-steps"),
    ],
)
def test_bad_objective_combinations(family, tmp_path, capsys, flags, needle):
    assert main(["train", "--data", str(family), "--out", str(tmp_path / "r"), *flags]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing is written for a rejected command


def test_confidence_order_samples_in_at_most_its_steps(tiny_run, capsys):
    argv = ["sample", str(tiny_run), "--n", "4", "--steps", "32", "--order", "confidence", "--threshold", "0.5"]
    result = json_out(capsys, [*argv, "--json", "--quiet"])
    assert len(result["samples"]) == 4 and result["nfe"] <= 33


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--threshold", "0.9"], "--threshold"),
        (["--order", "top-prob", "--threshold", "0.9"], "--threshold"),
        (["--order", "confidence", "--remask"], "--remask"),
        (["--order", "confidence", "--threshold", "1.5"], "--threshold"),
    ],
)
def test_bad_threshold_combinations(tiny_run, capsys, flags, needle):
    with pytest.raises(SystemExit) if "1.5" in flags else contextlib.nullcontext():
        assert main(["sample", str(tiny_run), "--n", "2", "--steps", "4", *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_semi_ar_is_rejected_for_proteins(tiny_run, capsys):
    assert main(["sample", str(tiny_run), "--semi-ar", "--length", "300"]) == 2
    assert "--semi-ar" in capsys.readouterr().err


def test_eval_proteins_times_its_samples(tiny_run, capsys):
    """`eval --task proteins` draws fresh samples and records how long the drawing took and on how many
    threads (the sampling speed of the README's protein table), beside the metrics."""
    pytest.importorskip("pyhmmer")
    result = json_out(capsys, ["eval", str(tiny_run), "--task", "proteins", "--n", "4", "--steps", "8", "--json"])
    settings = result["settings"]
    assert result["samples"]["n"] == 4 and settings["sampling_seconds"] > 0 and settings["threads"] >= 1
    assert json.loads((tiny_run / "protein_metrics.json").read_text())["settings"] == settings
