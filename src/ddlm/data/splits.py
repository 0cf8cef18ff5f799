"""How a protein family's distinct sequences are split into training, validation and test parts.

`hash` (the default): each sequence goes by its own SHA-256, so near-copies of a test record can sit in
training; it measures generalisation within the family and rewards memorising.
`identity:T`: sequences are clustered at >= T identity (MMseqs2 `easy-cluster`, `--min-seq-id T` with
80% coverage of both sequences) and whole clusters go to one side, so a test record's close
relatives are not in training. MMseqs2 is the field's standard tool for this (UniRef50 and the
homology splits of ProteinGym and FLIP are made with it or CD-HIT); it clusters ACYP's 26,856 records
in about 13 s on one core. Its greedy clustering does not forbid a >= T hit between members of two
clusters, so the split also counts the test records with such a hit among the records trained on
(`test_records_with_a_train_hit`).

Each part is filled by walking the units (sequences, or clusters) in the order of a SHA-256 and taking
those that fit: test first, then validation, each up to its fraction of the records. A unit larger than
what is left of a part goes to training, so the parts' sizes stay close to their fractions. A unit's
place is the hash of one member (its first sequence in sorted order), so every cluster is equally likely
to come early whatever its size. (Until 2026-12-07 it was the smallest hash of its members, which sorts
big clusters first: ACYP's identity:0.5 validation part was 12 clusters, closer to the training records
than the test part's 44, and checkpoint selection on it rewarded memorising.)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import UserError
from ..registry import Registry
from .fasta import write_fasta

SPLITS: Registry = Registry("split")

TRAIN, VALID, TEST = "train", "valid", "test"
COVERAGE = 0.8  # the fraction of both sequences an alignment must cover to join a cluster


def digest(text: str) -> float:
    """A number in [0, 1) from the SHA-256 of `text`: the order the units are dealt in."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


class Split:
    """Assigns each distinct sequence to TRAIN, VALID or TEST; `spec` is what `--split` said."""

    name: str

    def __init__(self, argument: str | None):
        self.argument = argument

    @property
    def spec(self) -> str:
        return self.name if self.argument is None else f"{self.name}:{self.argument}"

    def units(self, seqs: list[str]) -> list[list[int]]:
        """Groups of sequence indices that must stay on one side."""
        raise NotImplementedError

    def assign(self, seqs: list[str], test_fraction: float, valid_fraction: float) -> list[str]:
        units = sorted(self.units(seqs), key=lambda unit: digest(min(seqs[i] for i in unit)))
        parts = [TRAIN] * len(seqs)
        room = {TEST: round(test_fraction * len(seqs)), VALID: round(valid_fraction * len(seqs))}
        for unit in units:
            part = next((p for p in (TEST, VALID) if len(unit) <= room[p]), TRAIN)
            if part != TRAIN:
                room[part] -= len(unit)
            for i in unit:
                parts[i] = part
        return parts

    def check(self, test: list[str], train: list[str]) -> None:
        """Measure what the split lets through between the final parts (nothing, for a hash split)."""

    def info(self) -> dict:
        return {"split": self.spec}


@SPLITS.register
class HashSplit(Split):
    """Each sequence on its own; the test part is the sequences whose SHA-256 falls lowest."""

    name = "hash"

    def assign(self, seqs, test_fraction, valid_fraction):
        # the split of runs made before --split: a sequence is held out when its hash is below the
        # fraction, whatever the others are; validation takes the next band of hashes
        return [
            TEST if h < test_fraction else VALID if h < test_fraction + valid_fraction else TRAIN
            for h in map(digest, seqs)
        ]


def mmseqs() -> str:
    found = shutil.which("mmseqs")
    if found is None:
        raise UserError(
            "--split identity: needs MMseqs2 on PATH (apt install mmseqs2, conda install -c bioconda mmseqs2, "
            "or a static build from https://mmseqs.com/latest/)"
        )
    return found


@SPLITS.register
class IdentitySplit(Split):
    """Clusters of >= T sequence identity (MMseqs2), each kept whole on one side."""

    name = "identity"

    def __init__(self, argument: str | None):
        super().__init__(argument)
        try:
            self.threshold = float(argument) if argument is not None else 0.5
        except ValueError:
            self.threshold = -1.0
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"--split identity:{argument}: the identity must be a number in (0, 1], e.g. identity:0.5")
        self.argument = f"{self.threshold:g}"
        self.clusters = 0
        self.leaks: int | None = None

    def units(self, seqs):
        with tempfile.TemporaryDirectory(prefix="ddlm-mmseqs-") as tmp:
            fasta = Path(tmp) / "seqs.fa"
            write_fasta(fasta, [str(i) for i in range(len(seqs))], seqs)
            cmd = [mmseqs(), "easy-cluster", str(fasta), f"{tmp}/out", f"{tmp}/work"]
            cmd += ["--min-seq-id", str(self.threshold), "-c", str(COVERAGE), "--cov-mode", "0", "--threads", "1"]
            run(cmd)
            members: dict[int, list[int]] = {}
            for line in Path(f"{tmp}/out_cluster.tsv").read_text().splitlines():
                rep, member = line.split("\t")
                members.setdefault(int(rep), []).append(int(member))
        self.clusters = len(members)
        return list(members.values())

    def check(self, test: list[str], train: list[str]) -> None:
        """Count the test records with a training record at >= the threshold (the clusters' leaks)."""
        self.leaks = count_leaks(test, train, self.threshold)

    def info(self):
        return {"split": self.spec, "clusters": self.clusters, "test_records_with_a_train_hit": self.leaks}


def count_leaks(test: list[str], train: list[str], threshold: float) -> int:
    """Test records with a training record at >= threshold identity and 80% coverage (MMseqs2 search)."""
    if not test or not train:
        return 0
    with tempfile.TemporaryDirectory(prefix="ddlm-mmseqs-") as tmp:
        write_fasta(Path(tmp) / "test.fa", [str(i) for i in range(len(test))], test)
        write_fasta(Path(tmp) / "train.fa", [str(i) for i in range(len(train))], train)
        cmd = [mmseqs(), "easy-search", f"{tmp}/test.fa", f"{tmp}/train.fa", f"{tmp}/hits.m8", f"{tmp}/work"]
        cmd += ["--min-seq-id", str(threshold), "-c", str(COVERAGE), "--cov-mode", "0", "--threads", "1"]
        run(cmd)
        return len({line.split("\t")[0] for line in Path(f"{tmp}/hits.m8").read_text().splitlines()})


def run(cmd: list[str]) -> None:
    done = subprocess.run([*cmd, "-v", "1"], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UserError(f"MMseqs2 failed ({' '.join(cmd[:2])}, exit {done.returncode}): {' | '.join(tail)}")


def split_from_spec(spec: str | None) -> Split:
    """`--split hash` or `--split identity:0.5`."""
    name, _, argument = (spec or "hash").partition(":")
    if name not in SPLITS:
        raise UserError(f"--split {spec}: unknown split; choose from {', '.join(SPLITS.names())} (e.g. identity:0.5)")
    return SPLITS[name](argument or None)
