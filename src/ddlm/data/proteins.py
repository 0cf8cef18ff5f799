"""Protein families from FASTA: the ACYP family by name, or any FASTA file by path.

Exact duplicate sequences are removed (keeping the first record's id) before the split. The default
split is a deterministic function of each sequence's SHA-256, so it does not depend on file order, but
homologs cross it: it measures generalisation within the family, not to new families. `--split
identity:T` keeps whole clusters of >= T identity on one side (data/splits.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..rundir import HELDOUT_FASTA, PROTEIN_SPLIT, VALID_FASTA
from .fasta import read_fasta, write_fasta
from .labels import FROM_HEADERS, HEADER_KEY, record_labels
from .sources import RemoteFile, resolve, sha256_of
from .splits import TEST, TRAIN, VALID, digest, split_from_spec
from .tokenizers import CharTokenizer

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard amino acids
RESIDUES = AMINO_ACIDS + "X"  # what a protein record may hold: the 20 and X (unknown); the tokenizer's alphabet

ACYP = RemoteFile(
    name="acyp",
    relpath="acyp/hypf.fa",
    url="https://github.com/dacarlin/protein-transformers/raw/refs/heads/main/hypf.fa",
    sha256="9ebd5dfc4633f115b21b61be36b2bf5bdbd82cd862d6ba7bc241869ae0bf087c",
)


@dataclass
class ProteinData:
    tokenizer: CharTokenizer
    length: int
    train_ids: list[str]
    train_seqs: list[str]
    heldout_ids: list[str]
    heldout_seqs: list[str]
    info: dict
    train_labels: list[str] | None = None  # with `labels`: each record's label (data/labels.py)
    heldout_labels: list[str] | None = None
    valid_ids: list[str] = field(default_factory=list)  # the validation part, when the split has one
    valid_seqs: list[str] = field(default_factory=list)
    valid_labels: list[str] | None = None

    @property
    def train(self) -> torch.Tensor:
        return self.tokenizer.encode_padded(self.train_seqs, self.length)

    @property
    def heldout(self) -> torch.Tensor:
        return self.tokenizer.encode_padded(self.heldout_seqs, self.length)


def is_heldout(seq: str, fraction: float) -> bool:
    return digest(seq) < fraction


@dataclass
class SplitPlan:
    """How to split: `--split` (data/splits.py), the test and validation fractions, and with
    `train_records` a deterministic subset of the training part (the N with the lowest SHA-256)."""

    spec: str | None = None
    heldout_fraction: float = 0.05
    valid_fraction: float = 0.0
    train_records: int | None = None
    stored: Path | None = None  # a run directory whose saved split is reused (record ids -> part)


def load_proteins(
    spec: str,
    max_residues: int = 127,
    heldout_fraction: float = 0.05,
    skip_invalid: bool = False,
    labels: str | None = None,
    plan: SplitPlan | None = None,
) -> ProteinData:
    """The records of `spec`, deduplicated and split; with `labels` (a table's path, or "headers"), each
    record's label too (data/labels.py; a duplicate sequence keeps its first record's label)."""
    plan = plan or SplitPlan(heldout_fraction=heldout_fraction)
    path = resolve(ACYP) if spec == "acyp" else Path(spec)
    records = read_fasta(path, RESIDUES, max_residues, skip_invalid)
    record_labels_ = record_labels(labels, path, records) if labels else [None] * len(records.ids)
    first: dict[str, int] = {}  # each distinct sequence's first record
    for i, seq in enumerate(records.seqs):
        first.setdefault(seq, i)
    keep = sorted(first.values())
    seqs = [records.seqs[i] for i in keep]
    split = split_from_spec(plan.spec)
    saved = saved_parts(plan.stored) if plan.stored is not None else None
    if saved is not None:  # a resumed or evaluated run: its split as it was made, without clustering again
        parts = [saved[0].get(records.ids[i], "unused") for i in keep]
    else:
        parts = split.assign(seqs, plan.heldout_fraction, plan.valid_fraction) if seqs else []
    chosen = {part: [keep[j] for j, p in enumerate(parts) if p == part] for part in (TRAIN, VALID, TEST)}
    train_available = len(chosen[TRAIN]) if saved is None else saved[1].get("train_available")
    if plan.train_records is not None and saved is None:
        if plan.train_records > train_available:
            raise UserError(
                f"--train-records {plan.train_records}: the training part has {train_available} records "
                f"(split {split.spec})"
            )
        chosen[TRAIN] = sorted(sorted(chosen[TRAIN], key=lambda i: digest(records.seqs[i]))[: plan.train_records])
    if not chosen[TRAIN] or not chosen[TEST]:
        raise UserError(
            f"{path}: {len(seqs)} distinct sequences are too few for a training and a held-out set "
            f"(held-out fraction {plan.heldout_fraction}, split {split.spec})"
        )
    if plan.valid_fraction and not chosen[VALID]:
        raise UserError(f"{path}: no validation records (fraction {plan.valid_fraction}, split {split.spec})")
    if saved is None:
        split.check([records.seqs[i] for i in chosen[TEST]], [records.seqs[i] for i in chosen[TRAIN]])
    info = {
        "source": str(path),
        "sha256": sha256_of(path),
        "records": len(records.seqs) + len(records.skipped),
        "skipped_invalid": len(records.skipped),
        "duplicates_removed": len(records.seqs) - len(seqs),
        "train": len(chosen[TRAIN]),
        "heldout": len(chosen[TEST]),
        "heldout_fraction": plan.heldout_fraction,
    }
    if plan.spec is not None or plan.valid_fraction or plan.train_records is not None:  # runs before keep their info
        info.update(split.info() if saved is None else {k: saved[1].get(k) for k in split.info()})
        info.update(validation=len(chosen[VALID]), validation_fraction=plan.valid_fraction)
        info.update(train_available=train_available, train_records=plan.train_records)
    ids, seqs_, labels_ = ({part: [column[i] for i in chosen[part]] for part in chosen} for column in (
        records.ids, records.seqs, record_labels_
    ))  # fmt: skip
    data = ProteinData(
        CharTokenizer(RESIDUES, markers=True), max_residues + 2,
        ids[TRAIN], seqs_[TRAIN], ids[TEST], seqs_[TEST], info, valid_ids=ids[VALID], valid_seqs=seqs_[VALID],
    )  # fmt: skip
    if labels:
        data.train_labels, data.heldout_labels, data.valid_labels = labels_[TRAIN], labels_[TEST], labels_[VALID]
    return data


def save_split(data: ProteinData, run_dir: Path) -> None:
    """The held-out (test) and validation records as FASTA (with `label=VALUE` in their headers when
    labelled) and the split's provenance, so evaluation uses the same records."""
    parts = [(HELDOUT_FASTA, data.heldout_ids, data.heldout_seqs, data.heldout_labels)]
    if data.valid_ids:
        parts.append((VALID_FASTA, data.valid_ids, data.valid_seqs, data.valid_labels))
    for name, ids, seqs, labels in parts:
        if labels is not None:
            ids = [f"{i} {HEADER_KEY}{label}" for i, label in zip(ids, labels, strict=True)]
        write_fasta(run_dir / name, ids, seqs)
    (run_dir / PROTEIN_SPLIT).write_text(json.dumps({**data.info, "train_ids": data.train_ids}, indent=1))


def saved_parts(run_dir: Path) -> tuple[dict[str, str], dict] | None:
    """A run's saved split as record id -> part, and its provenance; None for runs made before `--split`
    (their hash split is recomputed, as it always was)."""
    info = json.loads((run_dir / PROTEIN_SPLIT).read_text())
    if "split" not in info:
        return None
    parts = dict.fromkeys(info["train_ids"], TRAIN)
    for part, name in ((VALID, VALID_FASTA), (TEST, HELDOUT_FASTA)):
        if (run_dir / name).is_file():
            parts.update(dict.fromkeys(read_fasta(run_dir / name, RESIDUES, 10**6).ids, part))
    return parts, info


def load_heldout(run_dir: Path, max_residues: int, part: str = HELDOUT_FASTA) -> tuple[list[str], list[str]]:
    """The ids and sequences of a saved part: `heldout.fa` (test) or `valid.fa` (validation)."""
    records = read_fasta(run_dir / part, RESIDUES, max_residues)
    return records.ids, records.seqs


def load_heldout_labels(run_dir: Path, max_residues: int, part: str = HELDOUT_FASTA) -> list[str]:
    """The label of each record of a saved part, from its header (a labelled run's split)."""
    records = read_fasta(run_dir / part, RESIDUES, max_residues)
    return record_labels(FROM_HEADERS, run_dir / part, records)
