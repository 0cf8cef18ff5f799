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
    spec: str, max_residues: int = 127, heldout_fraction: float = 0.05, skip_invalid: bool = False
) -> ProteinData:
    path = resolve(ACYP) if spec == "acyp" else Path(spec)
    records = read_fasta(path, RESIDUES, max_residues, skip_invalid)
    seen: set[str] = set()
    train_ids, train_seqs, held_ids, held_seqs = [], [], [], []
    for name, seq in zip(records.ids, records.seqs, strict=True):
        if seq in seen:
            continue
        seen.add(seq)
        if is_heldout(seq, heldout_fraction):
            held_ids.append(name), held_seqs.append(seq)
        else:
            train_ids.append(name), train_seqs.append(seq)
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
    return ProteinData(tokenizer, max_residues + 2, train_ids, train_seqs, held_ids, held_seqs, info)


def save_split(data: ProteinData, run_dir: Path) -> None:
    """The held-out records as FASTA and the split's provenance, so evaluation uses the same records."""
    write_fasta(run_dir / HELDOUT_FASTA, data.heldout_ids, data.heldout_seqs)
    (run_dir / PROTEIN_SPLIT).write_text(json.dumps({**data.info, "train_ids": data.train_ids}, indent=1))


def load_heldout(run_dir: Path, max_residues: int) -> tuple[list[str], list[str]]:
    records = read_fasta(run_dir / HELDOUT_FASTA, RESIDUES, max_residues)
    return records.ids, records.seqs
