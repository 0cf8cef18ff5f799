"""Run directories under real operations: one writer at a time, no flag silently ignored on --resume,
and a failing file system (full, read-only, permission denied, a directory in a file's place) named in
one line with the newest good checkpoint kept, after which --resume ends bitwise where an
uninterrupted run ends.

The full-disk and read-only cases use a real size-limited tmpfs when the tests may mount one (root on
Linux), and an ENOSPC injected at the write otherwise (and always, as a second test).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAMILY_RUN, train_argv
from safetensors.torch import load_file

import ddlm.checkpoint
from ddlm.checkpoint import CheckpointDir
from ddlm.cli import STORAGE_ADVICE, build_parser, main
from ddlm.cli.resume import OPERATIONAL, given_flags, recorded
from ddlm.config import RunConfig
from ddlm.objectives import OBJECTIVES
from ddlm.rundir import LOCK, METRICS, RunLock

RUN = {**FAMILY_RUN, "samples": 0, "eval_time_samples": 1, "precision": "fp32", "log_every": 5}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + ENV.get("PYTHONPATH", "")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process runs compute what the subprocess runs compute
    yield
    torch.set_num_threads(before)


def train(data: Path, out: Path, **flags) -> list[str]:
    return train_argv(data, out, **{**RUN, **flags})


def listing(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run with its size and modification time: 'nothing written' is this unchanged (the
    lock file aside: the lock itself, which says who holds it)."""
    files = [p for p in run.rglob("*") if p.is_file() and p.name != LOCK]
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def checkpoint_tensors(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(CheckpointDir(run)._path(step, ".safetensors"))


def assert_bitwise(a: Path, b: Path, step: int) -> None:
    x, y = checkpoint_tensors(a, step), checkpoint_tensors(b, step)
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])]


def metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("positions_per_s", "elapsed_s")} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family) -> Path:
    """An uninterrupted 20-step run, checkpoints every 5 steps."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(train(family, run, steps=20, checkpoint_every=5)) == 0
    return run


@pytest.fixture
def at_ten(reference, tmp_path) -> Path:
    """The reference run as if killed just after its step-10 checkpoint (its log runs further)."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for step in (15, 20):
        for suffix in (".json", ".safetensors"):
            CheckpointDir(run)._path(step, suffix).unlink()
    return run


# --- one writer -------------------------------------------------------------------------------------


def test_a_second_writer_stops_at_once_naming_the_holder(at_ten, family, capsys):
    before = listing(at_ten)
    with RunLock(at_ten):
        assert main(train(family, at_ten, steps=20, resume=True)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(at_ten) in err and f"pid {os.getpid()}" in err
    assert listing(at_ten) == before  # nothing written
    assert main(train(family, at_ten, steps=15, resume=True)) == 0  # released: the next writer goes on


def test_two_new_runs_into_one_directory(tmp_path, family, capsys):
    """The lock is taken before looking for a config, so the second of two creators cannot also create."""
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        assert main(train(family, run, steps=5)) == 2
    assert "another process is writing" in capsys.readouterr().err
    assert not (run / "config.json").exists()


@pytest.mark.slow
def test_concurrent_writers_and_a_killed_holder(at_ten, family):
    """Real processes: the holder trains, a second writer exits at once naming it, a reader samples
    meanwhile; once the holder is SIGKILLed its lock is gone and the next writer trains."""
    holder = subprocess.Popen([sys.executable, "-m", "ddlm", *train(family, at_ten, steps=100_000, resume=True)],
                              stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    deadline = time.monotonic() + 120
    while f"pid {holder.pid}" not in (at_ten / LOCK).read_text():
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.1)
    try:
        second = subprocess.run([sys.executable, "-m", "ddlm", *train(family, at_ten, steps=20, resume=True)],
                                capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"pid {holder.pid}" in second.stderr and str(at_ten) in second.stderr
        reader = subprocess.run([sys.executable, "-m", "ddlm", "sample", str(at_ten), "--n", "2", "--quiet"],
                                capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
        assert reader.returncode == 0, reader.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(60)
    third = subprocess.run([sys.executable, "-m", "ddlm", *train(family, at_ten, steps=12, resume=True)],
                           capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert third.returncode == 0, third.stderr


# --- no flag silently ignored -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, says",
    [
        ({"objective": "ar"}, "--objective ar (the run has sedd)"),
        ({"lr": 0.002}, "--lr 0.002 (the run has 0.001)"),
        ({"seed": 3, "batch_size": 8}, "--seed 3 (the run has 0); --batch-size 8 (the run has 16)"),
        ({"max_len": 60}, "--max-len 60 (the run has 48)"),
        ({"fixed_window": True}, "--fixed-window on (the run has off)"),
        ({"loss_weight": 1.0}, "--loss-weight 1.0 (the run has 0.5)"),
        ({"diffusion_block": 4}, "--diffusion-block does not apply to this run's objective sedd"),
        ({"preset": "small"}, "--preset small (the run has tiny)"),
    ],
)
def test_resume_refuses_a_flag_that_disagrees(at_ten, family, capsys, flags, says):
    before = listing(at_ten)
    assert main(train(family, at_ten, steps=20, resume=True, **flags)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and str(at_ten) in err
    assert listing(at_ten) == before


def test_resume_refuses_an_abbreviated_flag_and_other_data(at_ten, family, tmp_path, capsys):
    argv = train(family, at_ten, steps=20, resume=True)
    assert main([*argv, "--obj", "ar"]) == 2  # argparse takes unambiguous prefixes: so does the check
    assert "--objective ar (the run has sedd)" in capsys.readouterr().err
    other = tmp_path / "other.fa"
    shutil.copy(family, other)
    assert main(train(other, at_ten, steps=20, resume=True)) == 2
    assert f"--data {other} (the run was trained on {family})" in capsys.readouterr().err


def test_resume_takes_operational_flags_and_needs_no_data(at_ten, reference, capsys):
    argv = ["train", "--out", str(at_ten), "--resume", "--steps", "20", "--quiet", "--samples", "0",
            "--eval-time-samples", "1", "--log-every", "5", "--keep-checkpoints", "5", "--checkpoint-every", "5",
            "--eval-every", "100", "--precision", "fp32", "--max-bad-steps", "3", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert_bitwise(reference, at_ten, 20)  # --eval-every and --checkpoint-every change nothing computed


def test_every_train_flag_is_classified():
    """A flag is operational or checked against config.json: a new flag cannot be ignored by accident."""
    parser = build_parser()
    train_parser = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and "train" in a.choices)
    dests = {a.dest for a in train_parser.choices["train"]._actions} - {"help", "func", "os_error_hint"}
    for name in OBJECTIVES.names():
        config = RunConfig(data={}, objective=name)
        assert dests <= OPERATIONAL | set(recorded(config)), dests - OPERATIONAL - set(recorded(config))


def test_given_flags_are_the_typed_ones():
    argv = ["train", "--data", "x.fa", "--out", "r", "--obj", "ar", "--lr=0.01", "--fixed-window"]
    assert given_flags(build_parser(), argv) == {"data", "out", "objective", "lr", "fixed_window"}


def test_metrics_hold_each_step_once_after_a_resume(at_ten, reference, family):
    """Killed after logging steps 11-20 but before checkpointing them: the resumed run logs them again,
    and the log ends as the uninterrupted run's, each step once."""
    assert main(train(family, at_ten, steps=20, checkpoint_every=5, resume=True)) == 0
    assert metrics(at_ten) == metrics(reference)


# --- a failing file system ---------------------------------------------------------------------------


def fail_on_fsync(monkeypatch, error: int, after: int = 0) -> None:
    """The checkpoint's fsync fails with `error` from its `after`-th call on: the bytes never reach disk."""
    calls = {"n": 0}

    class FailingSync:
        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(error, os.strerror(error))
            os.fsync(fd)

    monkeypatch.setattr(ddlm.checkpoint, "os", FailingSync())


def assert_one_line(capsys, *fragments: str) -> str:
    """The command's error is one line holding each fragment, and nothing prints a traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(f in errors[0] for f in fragments), errors[0]
    return errors[0]


def test_injected_full_disk_keeps_the_newest_checkpoint_and_resumes_bitwise(
    at_ten, reference, family, capsys, monkeypatch
):
    fail_on_fsync(monkeypatch, errno.ENOSPC)
    assert main(train(family, at_ten, steps=20, checkpoint_every=5, resume=True)) == 2
    assert_one_line(capsys, str(at_ten / "checkpoints" / "step-00000015.safetensors"), "no space left", "--resume")
    assert CheckpointDir(at_ten).latest().step == 10  # verified; the failed save left no file behind
    assert not list((at_ten / "checkpoints").glob(".*.tmp"))
    monkeypatch.undo()
    assert main(train(family, at_ten, steps=20, checkpoint_every=5, resume=True)) == 0
    assert_bitwise(reference, at_ten, 20)


@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_each_storage_failure_is_one_line(at_ten, family, capsys, monkeypatch, error):
    fail_on_fsync(monkeypatch, error)
    assert main(train(family, at_ten, steps=20, checkpoint_every=5, resume=True)) == 2
    assert_one_line(capsys, "step-00000015.safetensors", STORAGE_ADVICE[error])
    assert CheckpointDir(at_ten).latest().step == 10


def test_a_directory_where_the_log_should_be(at_ten, reference, family, capsys):
    (at_ten / METRICS).unlink()
    (at_ten / METRICS).mkdir()
    assert main(train(family, at_ten, steps=20, checkpoint_every=5, resume=True)) == 2
    assert_one_line(capsys, str(at_ten / METRICS), "a directory stands where ddlm writes a file")
    assert CheckpointDir(at_ten).latest().step == 10
    (at_ten / METRICS).rmdir()
    assert main(train(family, at_ten, steps=20, checkpoint_every=5, resume=True)) == 0
    assert_bitwise(reference, at_ten, 20)


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs, where the tests may mount one; skipped elsewhere (the injected tests remain)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the file system to the last byte; the filler file, to delete."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    for size in (4096, 1):  # the last partial blocks
        with open(filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_a_really_full_disk(small_disk, at_ten, reference, family, capsys):
    run = small_disk / "run"
    shutil.copytree(at_ten, run)
    filler = fill(small_disk)
    assert main(train(family, run, steps=20, checkpoint_every=5, resume=True)) == 2
    err = assert_one_line(capsys, "no space left", str(run))
    assert CheckpointDir(run).latest().step == 10, err
    filler.unlink()
    assert main(train(family, run, steps=20, checkpoint_every=5, resume=True)) == 0
    assert_bitwise(reference, run, 20)
    assert metrics(run) == metrics(reference)


def test_a_read_only_file_system(small_disk, at_ten, family, capsys):
    run = small_disk / "run"
    shutil.copytree(at_ten, run)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        assert main(train(family, run, steps=20, checkpoint_every=5, resume=True)) == 2
        assert_one_line(capsys, str(run / LOCK), "read-only")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert main(train(family, run, steps=15, checkpoint_every=5, resume=True)) == 0
