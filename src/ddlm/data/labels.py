"""Labels of records, for a model of p(x | y) (classifier-free guidance, guidance/cfg.py): read, checked,
encoded, and fed to training.

A record's label comes from a table (`--labels FILE.tsv`: one `record id <TAB> label` per line; blank
lines and lines starting with '#' are skipped) or from its FASTA header (`--labels headers`:
`>id label=VALUE ...`); given both, they must agree. Every record needs one, every table line must
name a record of the data, and a label is one word (it is written back into `heldout.fa` headers).
The label vocabulary of a run is the sorted set of its records' labels; index K = len(vocabulary) is
the null label, which training substitutes for a record's own with probability p_drop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..batches import batch_indices
from ..errors import UserError
from .fasta import FastaRecords
from .sources import read_user_text

FROM_HEADERS = "headers"  # `--labels headers`: each record's label=VALUE in its FASTA header
HEADER_KEY = "label="


def header_label(header: str) -> str | None:
    """VALUE of the first `label=VALUE` word after the id of a FASTA header, or None."""
    for word in header.split()[1:]:
        if word.startswith(HEADER_KEY):
            return word[len(HEADER_KEY) :]
    return None


def read_label_table(path: str | Path) -> dict[str, tuple[str, int]]:
    """record id -> (label, line number) of a tab-separated table; a malformed line is a UserError
    naming the file and the line."""
    table: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(read_user_text(path, f"--labels {path}").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.rstrip("\r\n").split("\t")]
        if len(fields) != 2 or not all(fields):
            raise UserError(f"{path}:{n}: expected 'record id<TAB>label', got {line.strip()!r}")
        name, label = fields
        if len(label.split()) != 1:
            raise UserError(f"{path}:{n}: label {label!r} of record {name!r} must be one word (no spaces)")
        if name in table:
            raise UserError(f"{path}:{n}: record {name!r} is labelled twice (first at line {table[name][1]})")
        table[name] = (label, n)
    return table


def record_labels(source: str, fasta: Path, records: FastaRecords) -> list[str]:
    """The label of each record of `records` (read from `fasta`), from the table at `source` and/or the
    headers; a record without one, a table line naming no record, or a disagreement is a UserError."""
    table = {} if source == FROM_HEADERS else read_label_table(source)
    known = set(records.ids) | set(records.skipped_ids)
    for name, (_, n) in table.items():
        if name not in known:
            raise UserError(f"{source}:{n}: record {name!r} is not in {fasta}")
    labels = []
    for name, header, line in zip(records.ids, records.headers, records.lines, strict=True):
        in_header = header_label(header)
        in_table = table.get(name, (None, 0))[0]
        if in_header is not None and in_table is not None and in_header != in_table:
            raise UserError(
                f"{fasta}:{line}: record {name!r} has label={in_header} in its header but {in_table} in {source}"
            )
        label = in_table if in_table is not None else in_header
        if not label:
            where = "as label=VALUE in its header" if source == FROM_HEADERS else f"in {source}"
            raise UserError(f"{fasta}:{line}: record {name!r} has no label ({where})")
        labels.append(label)
    return labels


def encode_labels(labels: list[str], names: list[str], where: str) -> torch.Tensor:
    """[n] the index of each label in the vocabulary `names`; a label outside it is a UserError."""
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise UserError(f"{where}: label {unknown[0]!r} is not one of this run's labels ({', '.join(names)})")
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


class LabelFeed:
    """step -> [batch] the labels of the records that training step sees (`batches.batch_indices`, as
    TensorBatches draws them), each replaced by the null label with probability `dropout`: a pure
    function of (seed, step) from a generator of its own, so a resumed run is exact and the noise
    stream of the objective is the one an unlabelled run draws."""

    SALT = 7_777_777  # keeps the dropout draws apart from the epoch permutations' seeds

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int, dropout: float, null: int):
        self.labels, self.batch_size, self.seed = labels, batch_size, seed
        self.dropout, self.null = dropout, null

    def __call__(self, step: int) -> torch.Tensor:
        labels = self.labels[batch_indices(step, len(self.labels), self.batch_size, self.seed)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + self.SALT)
        dropped = torch.rand(len(labels), generator=g) < self.dropout
        return torch.where(dropped, self.null, labels)
