"""Training that survives faults and scales out: real SIGKILL / SIGINT / SIGTERM, corrupt and pickled
checkpoints, the non-finite-step guard, and a real 2-process DistributedDataParallel run (gloo, CPU).

Every run here is the tiny preset on the synthetic `family`, on one thread (OMP_NUM_THREADS=1), so the
subprocess runs and the in-process ones compute the same floating-point numbers.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAMILY_RUN, make_trainer, train_argv
from safetensors.torch import load_file

from ddlm.checkpoint import CheckpointDir
from ddlm.cli import main
from ddlm.run import load_run
from ddlm.train import StopTraining, Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV["PYTHONPATH"] = SRC + os.pathsep + ENV.get("PYTHONPATH", "")

# What the kill tests tried, for the report at the end of the session (pytest -s shows it).
TALLY = {"kills": 0, "bitwise_resumes": 0, "corrupt_cases": 0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    print(f"\nreliability tally: {TALLY}")


# every run here: the tiny family run, fp32, no samples, one time sample in the final bound
RELIABLE = {**FAMILY_RUN, "samples": 0, "eval_time_samples": 1, "precision": "fp32"}


def train(data: Path, out: Path, **flags) -> list[str]:
    """argv of `ddlm train` with RELIABLE's flags and these."""
    return train_argv(data, out, **{**RELIABLE, **flags})


def ddlm(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ddlm", *argv], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def start(*argv: str, code: str | None = None) -> subprocess.Popen:
    """`python -m ddlm ARGV` (or `python -c CODE ARGV`) in the background, stderr captured."""
    cmd = [sys.executable, "-m", "ddlm", *argv] if code is None else [sys.executable, "-c", code, *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, at_least: int, timeout: float = 120) -> int:
    """Poll RUN/checkpoints until a complete checkpoint at step >= at_least exists; its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = CheckpointDir(run).steps() if (run / "checkpoints").is_dir() else []
        done = [s for s in steps if s >= at_least and (run / f"checkpoints/step-{s:08d}.json").exists()]
        if done:
            return max(done)
        if proc.poll() is not None:
            raise AssertionError(
                f"training ended (code {proc.returncode}) before step {at_least}: {proc.stderr.read()}"
            )
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step >= {at_least} after {timeout} s")


def assert_same_tensors(a_path: Path, b_path: Path) -> None:
    a, b = load_file(a_path), load_file(b_path)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].equal(b[k]), k


def ckpt(run: Path, step: int) -> Path:
    return run / f"checkpoints/step-{step:08d}.safetensors"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family) -> Path:
    """An uninterrupted 40-step run, in a subprocess like the interrupted ones."""
    run = tmp_path_factory.mktemp("ref") / "run"
    done = ddlm(*train(family, run, steps=40, checkpoint_every=5, eval_every=2))
    assert done.returncode == 0, done.stderr
    return run


# --- 1. SIGKILL and exact resume -------------------------------------------------------------------


def kill_after_checkpoint(proc: subprocess.Popen, run: Path, at_least: int, must_kill: bool = False) -> int:
    """SIGKILL a training process once it has written a checkpoint at step >= at_least; that step."""
    try:
        seen = wait_for_checkpoint(proc, run, at_least)
        assert not must_kill or proc.poll() is None, "finished before the kill"
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(60) == -signal.SIGKILL
            TALLY["kills"] += 1
        return seen
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(reference, family, tmp_path):
    """Two real SIGKILLs at whatever point training has reached, then resume: the step-40 checkpoint equals
    the uninterrupted run's bit for bit (model, EMA, optimiser and RNG states)."""
    run = tmp_path / "run"
    flags = dict(checkpoint_every=5, eval_every=2)
    seen = kill_after_checkpoint(start(*train(family, run, steps=40, **flags)), run, 10, must_kill=True)
    # second kill, during the resumed session (it may already have finished)
    kill_after_checkpoint(start(*train(family, run, steps=40, resume=True, **flags)), run, seen + 10)
    done = ddlm(*train(family, run, steps=40, resume=True, **flags))
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "Traceback" not in done.stderr
    assert not list((run / "checkpoints").glob(".step-*.tmp"))
    assert_same_tensors(ckpt(reference, 40), ckpt(run, 40))
    TALLY["bitwise_resumes"] += 1


# SIGKILL at an exact point of a save: the process kills itself from inside CheckpointDir.save.
KILL_INSIDE_SAVE = """
import os, signal, sys
import ddlm.checkpoint as c
WHERE = os.environ["DDLM_TEST_KILL"]
original = c.atomic_write
def atomic_write(path, payload):
    if WHERE == "between" and path.name == "step-00000015.json":
        os.kill(os.getpid(), signal.SIGKILL)  # the tensor file is complete, its JSON never written
    if WHERE == "temp" and path.name == "step-00000015.safetensors":
        with open(path.parent / ".step-00000015.safetensors.x1y2.tmp", "wb") as f:
            f.write(payload[: len(payload) // 2])
        os.kill(os.getpid(), signal.SIGKILL)  # half a temporary file left behind
    original(path, payload)
c.atomic_write = atomic_write
from ddlm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["between", "temp"])
def test_kill_inside_a_save_then_resume(reference, family, tmp_path, where):
    """Killed between the tensor file and its JSON, or in the middle of a temporary file: the resume reports
    the incomplete step-15 checkpoint, removes the orphan temporary file, resumes from step 10 and still
    ends bitwise equal to the uninterrupted run."""
    run = tmp_path / "run"
    flags = dict(checkpoint_every=5, eval_every=2)
    env = {**ENV, "DDLM_TEST_KILL": where}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_INSIDE_SAVE, *train(family, run, steps=40, **flags)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    TALLY["kills"] += 1
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    if where == "between":
        assert "step-00000015.safetensors" in files and "step-00000015.json" not in files
    else:
        assert ".step-00000015.safetensors.x1y2.tmp" in files and "step-00000015.safetensors" not in files
    done = ddlm(*train(family, run, steps=40, resume=True, **flags))
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "at step 10" in done.stderr
    if where == "between":
        assert "step-00000015.safetensors" in done.stderr and "interrupted" in done.stderr
    assert not list((run / "checkpoints").glob(".step-*.tmp"))
    assert_same_tensors(ckpt(reference, 40), ckpt(run, 40))
    TALLY["bitwise_resumes"] += 1


# --- 2. corrupt checkpoints, pruning, SIGINT / SIGTERM ---------------------------------------------


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, family) -> Path:
    """A run with checkpoints at steps 5, 10 and 15 (in-process)."""
    run = tmp_path_factory.mktemp("c") / "run"
    assert main(train(family, run, steps=15, checkpoint_every=5, eval_every=5)) == 0
    assert CheckpointDir(run).steps() == [5, 10, 15]
    return run


def corrupt(run: Path, how: str) -> Path:
    """Damage the step-15 checkpoint; the file a warning must name."""
    weights, meta = ckpt(run, 15), run / "checkpoints/step-00000015.json"
    if how == "truncated-tensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return weights
    if how == "garbage-json":
        meta.write_bytes(b"\x00{not json at all\xff")
        return meta
    if how == "json-missing":
        meta.unlink()
        return weights
    if how == "json-not-a-record":
        meta.write_text("[1, 2, 3]")
        return meta
    if how == "tensors-missing":
        weights.unlink()
        return weights
    if how == "wrong-tensors":  # valid safetensors with a matching SHA-256, but not this run's state
        from safetensors.torch import save

        payload = save({"model.nonsense": torch.zeros(3)})
        weights.write_bytes(payload)
        record = json.loads(meta.read_text())
        import hashlib

        record["sha256"] = hashlib.sha256(payload).hexdigest()
        meta.write_text(json.dumps(record))
        return weights
    raise ValueError(how)


CORRUPTIONS = ["truncated-tensors", "garbage-json", "json-missing", "json-not-a-record", "tensors-missing"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_newest_checkpoint_is_reported_and_skipped(three_checkpoints, family, tmp_path, capsys, how):
    """load_run and --resume report the damaged newest checkpoint by name and use step 10; the resumed run
    re-creates step 15 bit for bit."""
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    bad = corrupt(run, how)
    TALLY["corrupt_cases"] += 1
    capsys.readouterr()

    loaded = load_run(run)
    err = capsys.readouterr().err
    assert loaded.checkpoint.step == 10
    assert "warning: skipping corrupt checkpoint" in err and str(bad) in err

    assert main(train(family, run, steps=15, resume=True)) == 0
    err = capsys.readouterr().err
    assert str(bad) in err and "resuming" in err and "at step 10" in err
    assert_same_tensors(ckpt(three_checkpoints, 15), ckpt(run, 15))


def test_checkpoint_that_does_not_fit_the_run_is_skipped_by_resume(three_checkpoints, family, tmp_path, capsys):
    """A well-formed, SHA-verified checkpoint whose tensors are not this run's state: --resume reports it
    and falls back instead of failing with a traceback."""
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    bad = corrupt(run, "wrong-tensors")
    TALLY["corrupt_cases"] += 1
    capsys.readouterr()
    assert main(train(family, run, steps=15, resume=True)) == 0
    err = capsys.readouterr().err
    assert str(bad) in err and "does not fit this run" in err and "at step 10" in err
    assert_same_tensors(ckpt(three_checkpoints, 15), ckpt(run, 15))


@pytest.mark.slow
def test_no_valid_checkpoint_is_a_user_error(three_checkpoints, family, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    for p in (run / "checkpoints").glob("*.safetensors"):
        p.write_bytes(b"")
    TALLY["corrupt_cases"] += 1
    result = ddlm(*train(family, run, steps=20, resume=True))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no valid checkpoint" in result.stderr and result.stderr.count("warning: skipping") == 3
    result = ddlm("sample", str(run), "--n", "1", "--quiet")
    assert result.returncode == 2 and "no valid checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_keep_last_k(family, tmp_path):
    run = tmp_path / "run"
    argv = train(family, run, steps=20, checkpoint_every=5, eval_every=100)
    assert main([*argv, "--keep-checkpoints", "2"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000015.json",
        "step-00000015.safetensors",
        "step-00000020.json",
        "step-00000020.safetensors",
    ]
    # an older incomplete checkpoint (a tensor file whose JSON never came) is pruned with the others
    (run / "checkpoints/step-00000012.safetensors").write_bytes(b"half")
    assert main([*train(family, run, steps=25, checkpoint_every=5, resume=True)]) == 0
    assert CheckpointDir(run).steps() == [20, 25]


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_and_stops_then_resumes(family, tmp_path, signum, code):
    run = tmp_path / "run"
    proc = start(*train(family, run, steps=100000, checkpoint_every=5, eval_every=50))
    try:
        wait_for_checkpoint(proc, run, 5)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    assert f"{name} received: checkpoint saved at step" in err and "Traceback" not in err
    step = int(err.split("checkpoint saved at step")[1].split()[0])
    assert CheckpointDir(run).steps()[-1] == step and step >= 5
    assert CheckpointDir(run).load(step).step == step
    done = ddlm(*train(family, run, steps=step + 3, resume=True))
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} at step {step}" in done.stderr
    assert CheckpointDir(run).steps()[-1] == step + 3


# --- 3. nothing is unpickled ------------------------------------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail loudly if anything unpickles while the test runs."""
    calls = []

    def refuse(name):
        def f(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called: ddlm must never unpickle")

        return f

    monkeypatch.setattr(pickle, "load", refuse("pickle.load"))
    monkeypatch.setattr(pickle, "loads", refuse("pickle.loads"))
    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    yield calls
    assert calls == []


def test_pickle_under_a_checkpoint_name_is_not_unpickled(three_checkpoints, tmp_path, capsys, no_unpickling):
    """A real torch.save pickle as the newest step-N.safetensors (with a matching SHA-256 so that it reaches
    the parser), and a pickle as a step-N.json: both are reported, never unpickled, and step 10 is used."""
    import hashlib
    import io

    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    state = load_file(ckpt(run, 15))
    buffer = io.BytesIO()
    torch.save(state, buffer)  # saving pickles; loading it is what must never happen
    payload = buffer.getvalue()
    ckpt(run, 15).write_bytes(payload)
    meta = run / "checkpoints/step-00000015.json"
    record = json.loads(meta.read_text())
    record["sha256"] = hashlib.sha256(payload).hexdigest()
    meta.write_text(json.dumps(record))
    (run / "checkpoints/step-00000016.safetensors").write_bytes(payload)
    (run / "checkpoints/step-00000016.json").write_bytes(pickle.dumps({"sha256": record["sha256"]}))
    TALLY["corrupt_cases"] += 2
    capsys.readouterr()
    loaded = load_run(run)
    err = capsys.readouterr().err
    assert loaded.checkpoint.step == 10
    assert f"{ckpt(run, 15)}: not a valid safetensors file" in err
    assert "step-00000016.json: unreadable" in err


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "last.ckpt"])
def test_run_directory_of_pickles_is_refused(tmp_path, capsys, no_unpickling, name):
    torch.save({"w": torch.zeros(2)}, tmp_path / name)
    for command in (["sample", str(tmp_path)], ["eval", str(tmp_path)]):
        assert main([*command, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "pickle" in err and name in err and "never unpickles" in err


# --- 4. the non-finite guard ----------------------------------------------------------------------


def nan_at(trainer: Trainer, bad_steps) -> None:
    """Make the objective's training loss NaN at the given steps (the graph stays, so backward runs)."""
    real = trainer.objective.training_loss

    def training_loss(net, x0, generator=None):
        loss = real(net, x0, generator=generator)
        return loss * math.nan if trainer.step in bad_steps else loss

    trainer.objective.training_loss = training_loss


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in trainer.net.state_dict().items()}
    state.update({f"ema.{k}": v.clone() for k, v in trainer.ema_net.state_dict().items()})
    for i, s in trainer.optimizer.state.items():
        state.update({f"opt.{i}.{k}": v.clone() for k, v in s.items() if torch.is_tensor(v)})
    return state


def test_nan_steps_are_skipped_and_counted(family, tmp_path):
    trainer = make_trainer(tmp_path, family, max_bad_steps=5)
    nan_at(trainer, {3, 4, 7})
    summary = trainer.fit(10, None, progress=False)
    assert summary["steps"] == 10 and summary["bad_steps"] == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if "event" in r]
    assert [(r["step"], r["bad_steps_total"]) for r in skipped] == [(3, 1), (4, 2), (7, 3)]
    assert all("non-finite" in r["event"] for r in skipped)
    logged = [r["step"] for r in records if "train_bits_per_token" in r]
    assert logged == [1, 2, 3, 6, 7, 9, 10]  # (0-based) steps 3, 4 and 7 were skipped; the counter moves on
    assert all(math.isfinite(r["train_bits_per_token"]) for r in records if "train_bits_per_token" in r)
    assert CheckpointDir(tmp_path).load(10).meta["bad_steps_total"] == 3


def test_skipped_step_changes_nothing(family, tmp_path):
    trainer = make_trainer(tmp_path, family)
    trainer.fit(3, None, progress=False)  # some optimiser state first
    nan_at(trainer, {3})
    before = snapshot(trainer)
    assert trainer.train_step() is None
    after = snapshot(trainer)
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].equal(after[k]), k
    trainer.step = 4
    assert trainer.train_step() is not None  # a good step after it trains again
    assert not snapshot(trainer)["model.head.weight"].equal(before["model.head.weight"])


def test_repeated_nans_stop_with_a_checkpoint_of_the_last_good_state(family, tmp_path):
    trainer = make_trainer(tmp_path, family, max_bad_steps=3)
    nan_at(trainer, set(range(5, 100)))
    trainer.fit(5, None, progress=False)
    good = snapshot(trainer)
    with pytest.raises(StopTraining) as stop:
        trainer.fit(100, None, progress=False)
    assert stop.value.exit_code == 1 and "3 consecutive non-finite steps" in str(stop.value)
    saved = CheckpointDir(tmp_path).latest()
    assert saved.step == 7 and saved.meta["bad_steps_total"] == 3
    for k, v in saved.tensors.items():
        if k in good:
            assert v.equal(good[k]), k


def test_cli_exit_code_1_after_max_bad_steps(family, tmp_path, monkeypatch, capsys):
    from ddlm.objectives import ScoreEntropy

    real = ScoreEntropy.training_loss
    monkeypatch.setattr(ScoreEntropy, "training_loss", lambda self, *a, **k: real(self, *a, **k) * math.nan)
    run = tmp_path / "run"
    assert main(train(family, run, steps=50, max_bad_steps=4)) == 1
    err = capsys.readouterr().err
    assert "4 consecutive non-finite steps at step 3" in err and "--lr" in err
    assert CheckpointDir(run).latest().step == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_steps_total"] for r in records if "event" in r] == [1, 2, 3, 4]


# --- 6. DistributedDataParallel -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *argv: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "ddlm",
        *argv,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


DDP_TOLERANCE = 1e-6  # relative, as the README states; the runs differ only in the order of floating-point sums


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(family, tmp_path):
    """torchrun with 2 gloo processes (global batch 16 = 2 x 8), 10 steps, then --resume to 20 (all ranks
    load the checkpoint), against one process with batch 16 for 20 steps. Both see the same records and
    the same noise, so every logged training loss and held-out bound agrees to float reduction order."""
    # warm-up 1: the default scales with each session's --steps (10, then 20), which would differ
    flags = dict(eval_every=5, log_every=1, checkpoint_every=5, warmup=1, json=True)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    one = ddlm(*train(family, single, steps=20, **flags))
    assert one.returncode == 0, one.stderr
    first = torchrun(2, *train(family, ddp, steps=10, **flags))
    assert first.returncode == 0, first.stderr
    assert "2 processes (global batch 16)" in first.stderr
    second = torchrun(2, *train(family, ddp, steps=20, resume=True, **flags))
    assert second.returncode == 0, second.stderr
    # rank 0 alone prints: one JSON summary per session, one "resuming" line
    for result in (first, second):
        assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 1
    assert second.stderr.count("resuming") == 1 and "at step 10" in second.stderr

    a, b = metrics(single), metrics(ddp)
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == len(a)  # rank 0 alone wrote: no duplicate line
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        assert ra["step"] == rb["step"] and ra.keys() == rb.keys()
        for key in ("train_bits_per_token", "heldout_bits_per_token", "grad_norm"):
            if key in ra:
                rel = abs(ra[key] - rb[key]) / abs(ra[key])
                worst = max(worst, rel)
                assert rel <= DDP_TOLERANCE, (ra, rb)
    print(f"\nDDP 2 processes vs 1: largest relative difference {worst:.3g} (tolerance {DDP_TOLERANCE})")
    wa, wb = load_file(ckpt(single, 20)), load_file(ckpt(ddp, 20))
    assert wb.keys() - wa.keys() == {"rng.torch.rank1"}  # every rank's dropout stream is saved
    for k in wa:
        if k.startswith(("model.", "ema.")):
            torch.testing.assert_close(wa[k], wb[k], rtol=DDP_TOLERANCE, atol=1e-6)
    sa, sb = json.loads(one.stdout), json.loads(second.stdout)
    assert sa["steps"] == sb["steps"] == 20
    assert abs(sa["heldout"]["bits_per_token"] - sb["heldout"]["bits_per_token"]) <= DDP_TOLERANCE * 10


@pytest.mark.slow
def test_ddp_rejects_a_batch_that_does_not_split(family, tmp_path):
    result = torchrun(2, *train(family, tmp_path / "r", steps=2, batch_size=15))
    assert result.returncode != 0
    assert "--batch-size 15 does not divide evenly among 2 processes" in result.stderr
    assert result.stderr.count("ddlm train: error:") == 1  # reported once, by rank 0
