"""Protein families from FASTA: the ACYP family by name, or any FASTA file by path.

Exact duplicate sequences are removed (keeping the first record's id) before the split, and the
split is a deterministic function of each sequence's SHA-256, so it does not depend on file order.
Homologs still cross the split: it measures generalisation within the family, not to new families.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..rundir import HELDOUT_FASTA, PROTEIN_SPLIT
from .fasta import read_fasta, write_fasta
from .labels import FROM_HEADERS, HEADER_KEY, record_labels
from .sources import RemoteFile, resolve, sha256_of
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

    @property
    def train(self) -> torch.Tensor:
        return self.tokenizer.encode_padded(self.train_seqs, self.length)

    @property
    def heldout(self) -> torch.Tensor:
        return self.tokenizer.encode_padded(self.heldout_seqs, self.length)


def is_heldout(seq: str, fraction: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(seq.encode()).digest()[:8], "big") / 2**64
    return bucket < fraction


def load_proteins(
    spec: str,
    max_residues: int = 127,
    heldout_fraction: float = 0.05,
    skip_invalid: bool = False,
    labels: str | None = None,
) -> ProteinData:
    """The records of `spec`, deduplicated and split; with `labels` (a table's path, or "headers"), each
    record's label too (data/labels.py; a duplicate sequence keeps its first record's label)."""
    path = resolve(ACYP) if spec == "acyp" else Path(spec)
    records = read_fasta(path, RESIDUES, max_residues, skip_invalid)
    record_labels_ = record_labels(labels, path, records) if labels else [None] * len(records.ids)
    seen: set[str] = set()
    train_ids, train_seqs, held_ids, held_seqs, train_labels, held_labels = [], [], [], [], [], []
    for name, seq, label in zip(records.ids, records.seqs, record_labels_, strict=True):
        if seq in seen:
            continue
        seen.add(seq)
        if is_heldout(seq, heldout_fraction):
            held_ids.append(name), held_seqs.append(seq), held_labels.append(label)
        else:
            train_ids.append(name), train_seqs.append(seq), train_labels.append(label)
    if not train_seqs or not held_seqs:
        raise UserError(
            f"{path}: {len(seen)} distinct sequences are too few for a training and a held-out set "
            f"(held-out fraction {heldout_fraction})"
        )
    info = {
        "source": str(path),
        "sha256": sha256_of(path),
        "records": len(records.seqs) + len(records.skipped),
        "skipped_invalid": len(records.skipped),
        "duplicates_removed": len(records.seqs) - len(seen),
        "train": len(train_seqs),
        "heldout": len(held_seqs),
        "heldout_fraction": heldout_fraction,
    }
    tokenizer = CharTokenizer(RESIDUES, markers=True)
    data = ProteinData(tokenizer, max_residues + 2, train_ids, train_seqs, held_ids, held_seqs, info)
    if labels:
        data.train_labels, data.heldout_labels = train_labels, held_labels
    return data


def save_split(data: ProteinData, run_dir: Path) -> None:
    """The held-out records as FASTA (with `label=VALUE` in their headers when labelled) and the split's
    provenance, so evaluation uses the same records."""
    names = data.heldout_ids
    if data.heldout_labels is not None:
        names = [f"{name} {HEADER_KEY}{label}" for name, label in zip(names, data.heldout_labels, strict=True)]
    write_fasta(run_dir / HELDOUT_FASTA, names, data.heldout_seqs)
    (run_dir / PROTEIN_SPLIT).write_text(json.dumps({**data.info, "train_ids": data.train_ids}, indent=1))


def load_heldout(run_dir: Path, max_residues: int) -> tuple[list[str], list[str]]:
    records = read_fasta(run_dir / HELDOUT_FASTA, RESIDUES, max_residues)
    return records.ids, records.seqs


def load_heldout_labels(run_dir: Path, max_residues: int) -> list[str]:
    """The label of each held-out record, from its header in `heldout.fa` (a labelled run's split)."""
    records = read_fasta(run_dir / HELDOUT_FASTA, RESIDUES, max_residues)
    return record_labels(FROM_HEADERS, run_dir / HELDOUT_FASTA, records)
