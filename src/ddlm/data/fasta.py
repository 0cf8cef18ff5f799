"""FASTA reading with validation that names the file, the record and the position of every problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .sources import read_user_text


@dataclass
class FastaRecords:
    ids: list[str]
    seqs: list[str]
    skipped: list[str] = field(default_factory=list)  # "record: reason" for each record left out
    headers: list[str] = field(default_factory=list)  # each kept record's whole header (labels: data/labels.py)
    lines: list[int] = field(default_factory=list)  # each kept record's header line
    skipped_ids: list[str] = field(default_factory=list)


def _records(path: Path):
    """Yield (header, sequence, line number of the header); sequences may span lines."""
    text = read_user_text(path)
    header, lineno, chunks = None, 0, []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or (header is None and line.startswith(";")):
            continue
        if line.startswith(">"):
            if header is not None:
                yield header, "".join(chunks), lineno
            header, lineno, chunks = line[1:].strip(), n, []
        elif header is None:
            raise UserError(f"{path}:{n}: sequence data before the first '>' header; is this a FASTA file?")
        else:
            chunks.append(line)
    if header is not None:
        yield header, "".join(chunks), lineno


def read_fasta(path: str | Path, alphabet: str, max_len: int, skip_invalid: bool = False) -> FastaRecords:
    """Read every record; a record that is empty, too long or holds a letter outside `alphabet` is an
    error naming file, record and position, or, with `skip_invalid`, is left out and listed in `skipped`.
    Sequences are never altered (no upper-casing, no substitution)."""
    path = Path(path)
    allowed = set(alphabet)
    out = FastaRecords([], [])
    for header, seq, lineno in _records(path):
        name = header.split()[0] if header else f"(unnamed record at line {lineno})"
        problem = None
        if not seq:
            problem = "empty sequence"
        elif len(seq) > max_len:
            problem = f"length {len(seq)} exceeds the maximum {max_len} (see --max-len)"
        else:
            bad = next((i for i, c in enumerate(seq) if c not in allowed), None)
            if bad is not None:
                problem = f"letter {seq[bad]!r} at position {bad + 1} is not in the alphabet {alphabet}"
        if problem is None:
            out.ids.append(name)
            out.seqs.append(seq)
            out.headers.append(header)
            out.lines.append(lineno)
        elif skip_invalid:
            out.skipped.append(f"{name}: {problem}")
            out.skipped_ids.append(name)
        else:
            raise UserError(f"{path}:{lineno}: record {name!r}: {problem} (use --skip-invalid to skip such records)")
    if not out.seqs:
        raise UserError(f"{path}: no valid FASTA records found")
    return out


def write_fasta(path: str | Path, ids: list[str], seqs: list[str]) -> None:
    with open(path, "w") as f:
        for name, seq in zip(ids, seqs, strict=True):
            f.write(f">{name}\n{seq}\n")


def read_records(path: str | Path) -> list[str]:
    """Sequences of a FASTA file as they are, unvalidated: for judging generated samples, where an odd
    letter or an empty record is something to count, not to stop at. The file itself must be readable FASTA."""
    return [seq for _, seq, _ in _records(Path(path))]
