"""Sudoku, text and protein evaluation from the CLI; report, animation and Hugging Face style export."""

import pytest
import torch
from conftest import json_out

from ddlm.cli import main


@pytest.fixture(scope="module")
def sudoku_run(make_run):
    return make_run("sudoku", steps=6, batch_size=8, eval_every=3, samples=1)


@pytest.mark.parametrize("order", ["random", "top-prob", "top-margin"])
def test_sudoku_eval_keeps_givens_and_reports(sudoku_run, capsys, order):
    result = json_out(
        capsys,
        [
            "eval",
            str(sudoku_run),
            "--task",
            "sudoku",
            "--order",
            order,
            "--givens",
            "40",
            "--n",
            "4",
            "--json",
            "--quiet",
        ],
    )
    assert result["n"] == 4 and 0 <= result["solved"] <= 1 and 0 <= result["cell_accuracy"] <= 1
    assert result["givens_mean"] >= 40


def test_sudoku_eval_takes_the_confidence_threshold(sudoku_run, capsys):
    """A threshold below every top probability commits every blank in the first call; --threshold
    without --order confidence is refused."""
    argv = ["eval", str(sudoku_run), "--task", "sudoku", "--givens", "40", "--n", "4", "--quiet"]
    result = json_out(capsys, [*argv, "--order", "confidence", "--threshold", "1e-9", "--json"])
    assert result["nfe"] == 1 and result["order"] == "confidence"
    assert main([*argv, "--order", "top-prob", "--threshold", "0.5"]) == 2
    assert "--threshold is for --order confidence" in capsys.readouterr().err


def test_sudoku_solver_never_changes_givens(sudoku_run):
    from ddlm.domains import SudokuDomain
    from ddlm.evaluate.sudoku import solve
    from ddlm.ordering import TopMargin
    from ddlm.run import load_run
    from ddlm.sampling import SampleSpec

    loaded = load_run(sudoku_run)
    puzzles, _ = SudokuDomain({"spec": "sudoku"}, sudoku_run).puzzles(None, 30, 3, 5)
    predictions, _, _ = solve(
        loaded.net, loaded.objective, puzzles, SampleSpec(steps=20, order=TopMargin()), seed=0, device="cpu"
    )
    given = puzzles >= 0
    assert torch.equal(predictions[given], puzzles[given]) and predictions.min() >= 0 and predictions.max() <= 8


def test_sudoku_puzzle_file_errors_name_the_line(sudoku_run, tmp_path, capsys):
    bad = tmp_path / "p.csv"
    bad.write_text("0" * 81 + "\n" + "12x" + "0" * 78 + "\n")
    assert main(["eval", str(sudoku_run), "--task", "sudoku", "--puzzles", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "p.csv:1" in err or "p.csv:2" in err


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "stories.txt"
    docs = [f"Once upon a time a cat number {i} saw a dog. The dog was happy and they played." for i in range(120)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_text_run_reports_bits_per_char_and_grows_past_the_window(text_file, make_run, capsys, objective):
    run = make_run(text_file, steps=4, seq_len=32, batch_size=8, samples=1, objective=objective)
    capsys.readouterr()
    result = json_out(capsys, ["eval", str(run), "--json", "--quiet", "--time-samples", "2"])
    assert result["bits_per_char"] == pytest.approx(result["bits_per_token"] / result["chars_per_token"])
    sample = json_out(
        capsys, ["sample", str(run), "--semi-ar", "--length", "100", "--n", "2", "--steps", "8", "--json", "--quiet"]
    )
    assert len(sample["samples"]) == 2 and all(len(s) > 40 for s in sample["samples"])


def test_bpe_text_run(text_file, make_run, capsys):
    run = make_run(text_file, steps=3, seq_len=16, batch_size=4, samples=1, tokenizer="bpe:300")
    assert (run / "tokenizer.json").is_file()
    capsys.readouterr()
    result = json_out(capsys, ["eval", str(run), "--json", "--quiet", "--time-samples", "1"])
    assert result["chars_per_token"] > 1.5  # BPE merges characters


def test_protein_metrics_from_a_sample_file(tiny_run, tmp_path, capsys):
    pytest.importorskip("pyhmmer")
    pytest.importorskip("parasail")
    pytest.importorskip("pyfamsa")
    samples = tmp_path / "s.fasta"
    samples.write_text(">a\nMKVLAAGGLLKKVVEEDD\n>b\nMKVLAAGGLLKKV\n>c\n\n")
    result = json_out(capsys, ["eval", str(tiny_run), "--samples", str(samples), "--json", "--quiet"])
    assert set(result) >= {"samples", "natural", "shuffled", "settings"}
    assert result["samples"]["validity"] == pytest.approx(2 / 3)
    assert (tiny_run / "protein_metrics.json").is_file()


def test_report_animation_and_export(tiny_run, tmp_path, capsys):
    gif = tiny_run / "denoise.gif"
    assert (
        main(
            [
                "sample",
                str(tiny_run),
                "--n",
                "3",
                "--steps",
                "30",
                "--animate",
                str(gif),
                "--quiet",
                "--out",
                str(tmp_path / "s.fa"),
            ]
        )
        == 0
    )
    assert gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    assert main(["report", str(tiny_run)]) == 0
    page = (tiny_run / "report.html").read_text()
    assert "<h2>Loss</h2>" in page and "data:image/gif" in page and "Samples" in page

    from ddlm.hub import from_pretrained
    from ddlm.run import load_run

    assert main(["export", str(tiny_run), str(tmp_path / "hf")]) == 0
    net, config = from_pretrained(tmp_path / "hf")
    original = load_run(tiny_run).net
    x = torch.randint(0, 25, (2, 50))
    assert torch.equal(net(x), original(x)) and config.objective == "sedd"
