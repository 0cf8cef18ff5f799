"""A run directory's files, each named here once.

RUN/config.json                              what was trained (config.RunConfig)
RUN/checkpoints/                             step-N.safetensors + step-N.json (checkpoint.py)
RUN/metrics.jsonl, RUN/loss.png              the training log and its curves
RUN/heldout.fa, RUN/split.json               a protein run's held-out records and split
RUN/heldout.safetensors, RUN/text_split.json a text run's held-out sequences and split
RUN/tokenizer.json                           a BPE text run's tokenizer
RUN/samples.fasta or RUN/samples.txt         the samples drawn at the end of training
RUN/eval.json, RUN/protein_metrics.json      what `ddlm eval` measured last
RUN/report.html                              `ddlm report`
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
HELDOUT_FASTA = "heldout.fa"
PROTEIN_SPLIT = "split.json"
HELDOUT_TENSORS = "heldout.safetensors"
TEXT_SPLIT = "text_split.json"
TOKENIZER = "tokenizer.json"
SAMPLES = "samples"  # the domain adds .fasta or .txt
EVAL = "eval.json"
PROTEIN_METRICS = "protein_metrics.json"
REPORT = "report.html"
# what an exported model carries besides its weights and config, when the run has it
SPLIT_FILES = (TOKENIZER, HELDOUT_FASTA, PROTEIN_SPLIT, TEXT_SPLIT, HELDOUT_TENSORS)

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
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
