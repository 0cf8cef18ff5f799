"""A run directory's files, each named here once.

RUN/config.json                              what was trained (config.RunConfig)
RUN/checkpoints/                             step-N.safetensors + step-N.json (checkpoint.py)
RUN/metrics.jsonl, RUN/loss.png              the training log and its curves
RUN/heldout.fa, RUN/split.json               a protein run's held-out (test) records and split
RUN/valid.fa                                 its validation records, when the split has a part for them
RUN/checkpoints/best.*                       with --keep-best: the EMA weights of the best validation bound
RUN/heldout.safetensors, RUN/text_split.json a text run's held-out sequences and split
RUN/tokenizer.json                           a BPE text run's tokenizer
RUN/samples.fasta or RUN/samples.txt         the samples drawn at the end of training
RUN/eval.json, RUN/protein_metrics.json      what `ddlm eval` measured last
RUN/report.html                              `ddlm report`
RUN/.lock                                    held by the one process writing the run (RunLock)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
HELDOUT_FASTA = "heldout.fa"
VALID_FASTA = "valid.fa"
PROTEIN_SPLIT = "split.json"
HELDOUT_TENSORS = "heldout.safetensors"
TEXT_SPLIT = "text_split.json"
TOKENIZER = "tokenizer.json"
SAMPLES = "samples"  # the domain adds .fasta or .txt
EVAL = "eval.json"
PROTEIN_METRICS = "protein_metrics.json"
REPORT = "report.html"
LOCK = ".lock"
# what an exported model carries besides its weights and config, when the run has it
SPLIT_FILES = (TOKENIZER, HELDOUT_FASTA, VALID_FASTA, PROTEIN_SPLIT, TEXT_SPLIT, HELDOUT_TENSORS)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def require_run_dir(run_dir: str | Path) -> Path:
    """A run directory must hold a ddlm config; pickled checkpoints from elsewhere are refused, not loaded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory (create one with `ddlm train --out {run_dir}`)")
    if not (run_dir / CONFIG).is_file():
        pickles = [p.name for p in run_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UserError(
                f"{run_dir}: holds {', '.join(pickles)}, which would need pickle to load; ddlm never unpickles "
                "(it could run arbitrary code). Convert the weights to safetensors with a ddlm config.json."
            )
        raise UserError(f"{run_dir}: not a ddlm run directory (no {CONFIG})")
    return run_dir


def read_json(path: Path) -> dict:
    """A JSON file of a run directory; a user error naming it when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def write_json(path: Path, record: dict) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise naming(e, path) from None


def naming(error: OSError, path: Path) -> OSError:
    """The same OS error with the file it concerns: a failed write() on an open file names none."""
    if error.filename is not None:
        return error
    return type(error)(error.errno, error.strerror or os.strerror(error.errno or 0), str(path))


def append_line(path: Path, line: str) -> None:
    """Append one line to a log of the run; an OS error names the file."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise naming(e, path) from None


def trim_log(path: Path, step: int) -> int:
    """Drop a JSON-lines log's records after `step` (and a torn last line): a run resumed from the
    checkpoint at `step` logs those steps again. Returns how many lines went; rewritten atomically."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # half a line, written when the process died
        if not isinstance(record, dict) or record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) < len(lines):
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise naming(e, path) from None
    return len(lines) - len(kept)


class RunLock:
    """The run directory's writer lock: an exclusive `flock` on RUN/.lock, held while one process
    trains into the run. The OS releases it when that process ends, however it ends (SIGKILL too), so a
    killed run never leaves a stale lock; the file itself only says who held it last. Readers (`sample`,
    `eval`, `report`) never take it. Use as a context manager around everything that writes the run."""

    def __init__(self, run_dir: str | Path, flag: str = "--out"):
        self.path = Path(run_dir) / LOCK
        self.flag = flag
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise naming(e, self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(
                    f"{self.flag} {self.path.parent}: another process is writing this run directory "
                    f"({holder or 'holder unknown'}); wait for it to end or stop it"
                ) from None
            # a file system without locks (some network mounts): say so and go on unguarded
            warning = f"cannot lock {self.path} ({e.strerror}); make sure no other process writes to it"
            print(f"warning: {warning}", file=sys.stderr)
            return self
        self.fd = fd
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        try:  # who holds it, for the message a second writer gets; the lock holds without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
