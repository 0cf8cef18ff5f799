"""Property tests of input validation: whatever a user types or feeds in, `ddlm` either succeeds (exit 0)
or exits 2 with one `ddlm COMMAND: error: ...` line on stderr, and never shows a traceback.

Random bytes and FASTA-like texts go through `ddlm train --data FILE`, random templates through
`ddlm infill`, and random values (garbage, negative, zero, non-finite, huge, small) through the numeric
flags of train, sample and infill. Everything runs in-process (`ddlm.cli.main`); argparse's SystemExit
counts as the exit code. A value that parses but would make the call expensive (say `--steps 10**9`,
a legitimate request) is only parsed, not run.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
from conftest import train_argv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddlm.cli import build_parser, main
from ddlm.data.proteins import RESIDUES

TALLY = {"examples": 0, "succeeded": 0, "user_errors": 0}
PER_TEST: dict[str, dict[str, int]] = {}


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.fixture(autouse=True, scope="module")
def one_thread_and_report():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    print(f"\nfuzz tally: {TALLY}")
    for test, counts in PER_TEST.items():
        print(f"  {test}: {counts}")


def run(argv: list[str]) -> tuple[int, str]:
    """main(argv) -> (exit code, stderr), asserting the contract: 0, or 2 with one error line and no traceback."""
    TALLY["examples"] += 1
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split()[0].split("[")[0]
    per_test = PER_TEST.setdefault(test, {"examples": 0, "exit 0": 0, "exit 2": 0})
    per_test["examples"] += 1
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse rejects a flag value
                code = e.code
    except Exception as e:
        raise AssertionError(f"traceback for ddlm {argv!r}:\n{traceback.format_exc()}\nstderr: {err.getvalue()}") from e
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    per_test[f"exit {code}"] = per_test.get(f"exit {code}", 0) + 1
    if code == 0:
        TALLY["succeeded"] += 1
        return 0, text
    errors = [line for line in text.splitlines() if ": error:" in line]
    assert code == 2, (argv, code, text)
    # "ddlm train: error: ..." (or "ddlm: error: unrecognized arguments: ..." from the top-level parser)
    assert len(errors) == 1 and errors[0].startswith((f"ddlm {argv[0]}: error: ", "ddlm: error: ")), (argv, text)
    if argv[0] == "train" and "--out" in argv and "--resume" not in argv:
        out = Path(argv[argv.index("--out") + 1])
        assert not out.exists(), f"a rejected train left {sorted(p.name for p in out.iterdir())} behind: {text}"
    TALLY["user_errors"] += 1
    return code, text


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch)) / "run"


# one cheap step of the tiny model: what every fuzzed training command runs with
TRAIN = dict(max_len=48, batch_size=4, samples=0, eval_time_samples=1, eval_every=1000, precision="fp32")


def train(data, scratch: Path, **flags) -> list[str]:
    """argv of one cheap training step on `data` into a fresh run directory."""
    return train_argv(data, fresh(scratch), **{"steps": 1, **TRAIN, **flags})


# --- data files -------------------------------------------------------------------------------------


@fuzz(200)
@given(payload=st.binary(max_size=3000))
def test_random_bytes_as_fasta(scratch, payload):
    path = Path(tempfile.mkdtemp(dir=scratch)) / "data.fa"
    path.write_bytes(payload)
    run(train(path, scratch))


residues = st.text(alphabet=RESIDUES, min_size=1, max_size=50)  # --max-len 48: a few too long
noisy_residues = st.text(alphabet=RESIDUES + "acgu*-._ \t1>;Z\r\x00é", min_size=0, max_size=60)
header = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=20)
record = st.tuples(header, st.one_of(residues, residues, noisy_residues), st.sampled_from(["\n", "\r\n"]))


@fuzz(300)
@given(
    records=st.lists(record, max_size=60),
    prefix=st.sampled_from(["", "", "", "", "", ";comment\n", "\n\n", "MKV\n", "\ufeff"]),
    skip_invalid=st.booleans(),
    heldout=st.sampled_from(["0.05", "0.3", "0.5"]),
)
def test_fasta_like_texts(scratch, records, prefix, skip_invalid, heldout):
    text = prefix + "".join(f">{h}{nl}{s}{nl}" for h, s, nl in records)
    path = Path(tempfile.mkdtemp(dir=scratch)) / "data.fasta"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code, err = run(train(path, scratch, heldout_fraction=heldout, skip_invalid=skip_invalid))
    if code == 2:
        assert str(path) in err or "--batch-size" in err, err  # the error names the file (or the flag)


words = st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "é", "\t", "\x00", "🙂", ".", "\r\n", "\u2028"])
document = st.lists(words, max_size=40).map(" ".join)
text_file = st.one_of(st.text(max_size=400), st.lists(document, max_size=40).map("\n\n".join))


@fuzz(150)
@given(text=text_file)
def test_random_text_files(scratch, text):
    path = Path(tempfile.mkdtemp(dir=scratch)) / "data.txt"
    path.write_text(text, encoding="utf-8")
    argv = train(path, scratch)
    run([*argv, "--seq-len", "8"])


def _valid_sudoku_lines() -> list[str]:
    from ddlm.data.sudoku import generate_puzzles

    lines = []
    for puzzle, solution in generate_puzzles(12, 0, givens=30):
        p, s = "".join(map(str, puzzle)), "".join(map(str, solution))
        lines += [f"{p},{s}", p.replace("0", "."), s]
    return lines


VALID_SUDOKU = _valid_sudoku_lines()
sudoku_line = st.one_of(
    st.sampled_from(VALID_SUDOKU),
    st.sampled_from(VALID_SUDOKU).flatmap(
        lambda line: st.tuples(st.integers(0, len(line) - 1), st.sampled_from("0123456789.,x ")).map(
            lambda edit: line[: edit[0]] + edit[1] + line[edit[0] + 1 :]
        )
    ),
    st.text(alphabet="0123456789.,", min_size=75, max_size=170),
    st.text(max_size=30),
    st.just("0" * 81),
    st.just("1" * 81 + "," + "1" * 81),
)


@fuzz(60)
@given(
    lines=st.one_of(
        st.lists(sudoku_line, max_size=12),
        st.lists(st.sampled_from(VALID_SUDOKU), min_size=3, max_size=12).map(lambda x: ["quizzes,solutions", *x]),
    )
)
def test_random_sudoku_files(scratch, lines):
    path = Path(tempfile.mkdtemp(dir=scratch)) / "puzzles.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    argv = train(f"sudoku:{path}", scratch)
    run(argv)


@pytest.mark.parametrize("content", ["", "\n\n", "# nothing\n", "quizzes,solutions\n"])
def test_puzzle_file_without_records(scratch, content):
    path = Path(tempfile.mkdtemp(dir=scratch)) / "puzzles.csv"
    path.write_text(content)
    run(train(f"sudoku:{path}", scratch))


DOWNLOADS = {"acyp", "tinystories", "tinyshakespeare", "text8"}  # these may reach the network


@fuzz(100)
@given(spec=st.one_of(st.text(max_size=20), st.sampled_from(["x.fa", "x.txt", "sudoku:", "sudoku:x", "/", ".fa"])))
def test_random_data_specs(scratch, spec):
    if spec.strip().lower() in DOWNLOADS or spec.startswith("-"):
        return
    run(train(spec, scratch))


# --- templates ----------------------------------------------------------------------------------------

template_chars = st.sampled_from(list(RESIDUES + "_") * 4 + list("*-xz. \t\n1é\u200b>"))


@fuzz(300)
@given(template=st.one_of(st.text(template_chars, max_size=70), st.text(max_size=30)))
def test_random_templates(tiny_run, template):
    argv = ["infill", str(tiny_run), "--template", template, "--n", "1", "--steps", "4", "--quiet", "--json"]
    code, err = run(argv)
    if code == 0:
        return
    assert "--template" in err or "argument" in err, err


# --- flag values --------------------------------------------------------------------------------------

garbage = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e400", "-1e400", "0x10", "1_0", " 3", "3.", "1e-400", ""]),
    st.sampled_from(["1" + "0" * 400, "-" + "9" * 400, "9" * 5000, " 2\n", "-1\n", "\x00", "１２"]),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-3, 4).map(str),
    st.floats(-2, 2).map(str),
)

# flag -> the largest parsed value that is cheap enough to actually run (larger ones are only parsed)
TRAIN_FLAGS = {
    "--steps": 3,
    "--time-budget": 0.002,
    "--lr": None,
    "--batch-size": 64,
    "--seed": None,
    "--ema": None,
    "--dropout": None,
    "--warmup": None,
    "--weight-decay": None,
    "--heldout-fraction": None,
    "--max-len": 200,
    "--samples": 3,
    "--sample-steps": 8,
    "--eval-every": None,
    "--checkpoint-every": None,
    "--eval-time-samples": 4,
    "--hybrid-lambda": None,
    "--diffusion-steps": None,
    "--max-bad-steps": None,
    "--log-every": None,
    "--keep-checkpoints": None,
    "--seq-len": None,
    "--max-docs": None,
}


def cheap(argv: list[str], limits: dict[str, float | None], flag: str) -> bool:
    """Does argv parse to a value of `flag` small enough to run? (argparse errors are cheap too.)"""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return True
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    limit = limits[flag]
    return limit is None or value is None or value <= limit


@fuzz(500)
@given(flag=st.sampled_from(sorted(TRAIN_FLAGS)), value=garbage)
def test_train_flag_values(family, scratch, flag, value):
    flags = {flag.lstrip("-").replace("-", "_"): None}  # the fuzzed flag replaces any base value
    if flag == "--time-budget":
        flags["steps"] = None  # the two are exclusive
    if flag in ("--hybrid-lambda", "--diffusion-steps"):
        flags["objective"] = "d3pm"
    argv = [*train(family, scratch, **flags), f"{flag}={value}"]
    if not cheap(argv, TRAIN_FLAGS, flag):
        return
    run(argv)


SAMPLE_FLAGS = {"--n": 8, "--steps": 64, "--batch-size": None, "--seed": None, "--order-noise": None}


@fuzz(300)
@given(
    command=st.sampled_from(["sample", "infill"]),
    flag=st.sampled_from(sorted(SAMPLE_FLAGS)),
    value=garbage,
    order=st.booleans(),
)
def test_sample_and_infill_flag_values(tiny_run, command, flag, value, order):
    argv = [command, str(tiny_run), "--quiet", "--json"]
    if command == "infill":
        argv += ["--template", "M__KV_LL"]
    if flag != "--n":
        argv += ["--n", "2"]
    if flag != "--steps":
        argv += ["--steps", "8"]
    if order or flag == "--order-noise":
        argv += ["--order", "top-prob"]
    argv.append(f"{flag}={value}")
    if not cheap(argv, SAMPLE_FLAGS, flag):
        return
    run(argv)


@pytest.mark.parametrize("command", ["sample", "infill", "eval"])
def test_huge_seed_for_sample_infill_eval(tiny_run, command):
    extra = {"sample": ["--n", "1", "--steps", "4"], "infill": ["--template", "M_K", "--n", "1", "--steps", "4"]}
    extra["eval"] = ["--max-sequences", "2", "--time-samples", "1"]
    run([command, str(tiny_run), "--quiet", *extra[command], f"--seed={10**30}"])
