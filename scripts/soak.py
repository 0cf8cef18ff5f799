"""Soak: kill a training run again and again, resume it each time, and check it ends where an
uninterrupted run ends, bit for bit.

    python scripts/soak.py [--cycles 200] [--minutes 60] [--steps 3000] [--seed 0] [--workdir DIR] [--json]

A *round* trains one run to --steps. Each *cycle* starts `ddlm train` (with --resume once the run
exists), lets it run, and stops it at a random moment: SIGKILL (3 in 4) or SIGTERM. Half the cycles
kill at a uniformly random time after the start (during start-up, training, evaluation or a save);
the other half wait for the child to begin writing a checkpoint file and kill it 0-40 ms later. The
child is `ddlm train` with checkpoint.atomic_write wrapped to say on stderr when each write begins
and ends, and to write in chunks with short pauses, so that a kill lands inside a write often; a kill
counts as "during a write" when the child began a write it never finished. Nothing it computes
changes. When a cycle's child finishes the run by itself, the round ends: its final checkpoint
(weights, EMA, optimiser state, RNG states) must equal the uninterrupted reference run's tensor for
tensor, bit for bit, and its metrics.jsonl must hold the reference's steps once each with the same
losses. Rounds go on until --cycles kills and --minutes have both passed; the round under way then
finishes without kills. Every start must succeed (a killed holder's lock is gone), every stop must
end with the signal's exit code, and nothing may print a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from ddlm.checkpoint import CheckpointDir
from ddlm.device import cpu_vector_flags

# The child: `ddlm train` with checkpoint.atomic_write (the real one) announcing each write on stderr,
# and each of its fsyncs 20 ms slower, so that a kill lands inside a write often.
CHILD = """
import os, sys, time
import ddlm.checkpoint as checkpoint

class SlowSync:
    def __getattr__(self, name):
        return getattr(os, name)
    def fsync(self, fd):
        time.sleep(0.02)
        os.fsync(fd)

checkpoint.os = SlowSync()
real_write = checkpoint.atomic_write

def announced(path, payload):
    print(f"soak: write-begin {path.name}", file=sys.stderr, flush=True)
    real_write(path, payload)
    print(f"soak: write-end {path.name}", file=sys.stderr, flush=True)

checkpoint.atomic_write = announced
from ddlm.cli import main
sys.exit(main(sys.argv[1:]))
"""

TIMING = ("positions_per_s", "elapsed_s")  # metrics fields that measure the clock, not the run


@dataclass
class Tally:
    cycles: int = 0
    sigkill: int = 0
    sigterm: int = 0
    during_write: int = 0
    by_mode: dict = field(default_factory=lambda: {"random": 0, "write": 0})
    rounds: int = 0
    rounds_equal: int = 0
    metrics_equal: int = 0
    failures: list = field(default_factory=list)


def family_fasta(path: Path, n: int = 300, length: int = 40, seed: int = 0) -> Path:
    """A synthetic protein family (an ancestor mutated at 10% of positions), as in the tests."""
    rng = random.Random(seed)
    amino = "ACDEFGHIKLMNPQRSTVWY"
    ancestor = "M" + "".join(rng.choice(amino) for _ in range(length - 1))
    with open(path, "w") as f:
        for i in range(n):
            seq = "".join(rng.choice(amino) if rng.random() < 0.1 and k > 0 else c for k, c in enumerate(ancestor))
            f.write(f">seq{i}\n{seq[: length - rng.randint(0, 5)]}\n")
    return path


def train_argv(data: Path, run: Path, steps: int, seed: int) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--max-len", "48",
            "--batch-size", "16", "--steps", str(steps), "--seed", str(seed), "--checkpoint-every", "20",
            "--eval-every", "100", "--log-every", "10", "--samples", "0", "--eval-time-samples", "1",
            "--precision", "fp32", "--quiet"]  # fmt: skip


class Child:
    """One `ddlm train` process and what it said on stderr, read as it goes."""

    def __init__(self, argv: list[str]):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        self.begins = threading.Semaphore(0)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("soak: write-begin"):
                self.begins.release()

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def inside_a_write(self) -> bool:
        markers = [line for line in self.lines if line.startswith("soak: write-")]
        return bool(markers) and "write-begin" in markers[-1]


def one_cycle(argv: list[str], rng: random.Random, tally: Tally, kill: bool) -> bool:
    """Start the child, stop it (when `kill`) as the cycle's mode says; True if it finished the run."""
    child = Child(argv)
    mode = rng.choice(["random", "write"])
    signum = signal.SIGKILL if rng.random() < 0.75 else signal.SIGTERM
    if kill and mode == "random":
        killed = child.proc.poll() is None and not _sleep_unless_done(child, rng.uniform(0.2, 6.0))
    elif kill:
        waited = [child.begins.acquire(timeout=60) for _ in range(rng.randint(1, 3))]
        killed = all(waited) and child.proc.poll() is None
        time.sleep(rng.uniform(0, 0.04))
    else:
        killed = False
    if killed:
        child.proc.send_signal(signum)
    code = child.finish()
    text = "".join(child.lines)
    if "Traceback" in text or "another process is writing" in text:
        tally.failures.append({"cycle": tally.cycles, "code": code, "stderr": text[-2000:]})
    if code == 0:
        return True
    expected = {-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM}
    if not killed or code not in expected:
        tally.failures.append({"cycle": tally.cycles, "code": code, "stderr": text[-2000:]})
        return False
    tally.cycles += 1
    tally.by_mode[mode] += 1
    tally.sigkill += signum == signal.SIGKILL
    tally.sigterm += signum == signal.SIGTERM
    tally.during_write += child.inside_a_write()
    return False


def _sleep_unless_done(child: Child, seconds: float) -> bool:
    """Sleep `seconds` or until the child exits; True if it exited."""
    try:
        child.proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def compare_to_reference(run: Path, reference: Path, steps: int) -> tuple[bool, bool]:
    """(final checkpoints bitwise equal, metrics the same steps and losses once each)."""
    a = load_file(CheckpointDir(run)._path(steps, ".safetensors"))
    b = load_file(CheckpointDir(reference)._path(steps, ".safetensors"))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return same, _metrics(run) == _metrics(reference)


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def soak(args) -> Tally:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ddlm-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    data = family_fasta(work / "family.fa")
    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    code = Child(train_argv(data, reference, args.steps, args.seed)).finish()
    assert code == 0, f"the reference run failed ({code})"
    rng, tally, start = random.Random(args.seed), Tally(), time.monotonic()
    bar = tqdm(total=args.cycles, unit="kill", file=sys.stderr, dynamic_ncols=True, disable=args.quiet)
    while tally.cycles < args.cycles or time.monotonic() - start < args.minutes * 60:
        run = work / f"round-{tally.rounds}"
        shutil.rmtree(run, ignore_errors=True)
        argv, done = train_argv(data, run, args.steps, args.seed), False
        while not done and not tally.failures:
            kill = tally.cycles < args.cycles or time.monotonic() - start < args.minutes * 60
            resume = ["--resume"] if (run / "config.json").exists() else []
            before = tally.cycles
            done = one_cycle(argv + resume, rng, tally, kill)
            bar.update(tally.cycles - before)
        if tally.failures:
            break
        same, metrics = compare_to_reference(run, reference, args.steps)
        tally.rounds += 1
        tally.rounds_equal += same
        tally.metrics_equal += metrics
        bar.set_postfix(rounds=tally.rounds, equal=tally.rounds_equal, in_writes=tally.during_write)
        shutil.rmtree(run)
    bar.close()
    tally.minutes = (time.monotonic() - start) / 60
    return tally


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=200, help="kill/resume cycles, at least (200)")
    p.add_argument("--minutes", type=float, default=60, help="and at least this long (60)")
    p.add_argument("--steps", type=int, default=3000, help="steps of each round's run (3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where the runs go (default: a new temporary directory)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the tally as one JSON object")
    args = p.parse_args()
    tally = soak(args)
    record = {**vars(tally), "cpu": cpu_vector_flags(), "steps_per_round": args.steps}
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{tally.cycles} kill/resume cycles in {tally.minutes:.1f} min ({tally.sigkill} SIGKILL, {tally.sigterm} "
              f"SIGTERM; {tally.during_write} inside a checkpoint write); {tally.rounds} rounds of {args.steps} steps, "
              f"{tally.rounds_equal} bitwise equal to the uninterrupted run, {tally.metrics_equal} with the same "
              f"metrics; failures: {len(tally.failures)}")  # fmt: skip
        for failure in tally.failures:
            print(json.dumps(failure), file=sys.stderr)
    sys.exit(1 if tally.failures or tally.rounds_equal < tally.rounds else 0)


if __name__ == "__main__":
    main()
