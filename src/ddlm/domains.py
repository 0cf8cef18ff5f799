"""What a kind of data needs beyond token ids: how to load it, keep its split, and read it back.

A domain turns `--data` into training and held-out id tensors with a tokenizer, saves the split in
the run directory, and rebuilds tokenizer and held-out ids from a run directory for evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import proteins
from .data.tokenizers import CharTokenizer
from .errors import UserError


class ProteinDomain:
    kind = "protein"
    supports_semi_ar = False

    def __init__(self, data_cfg: dict):
        self.cfg = data_cfg
        self.max_residues = data_cfg.get("max_residues", 127)

    @property
    def length(self) -> int:
        return self.max_residues + 2  # start and end markers

    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(proteins.AMINO_ACIDS, markers=True)

    def prepare(self, run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
        data = proteins.load_proteins(
            self.cfg["spec"], self.max_residues, self.cfg.get("heldout_fraction", 0.05), self.cfg.get("skip_invalid")
        )
        proteins.save_split(data, run_dir)
        return data.train, data.heldout, data.info

    def reload(self, run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Training and held-out ids for a resumed run; the source must be the file the split was made from."""
        import json

        split = json.loads((run_dir / "split.json").read_text())
        data = proteins.load_proteins(
            self.cfg["spec"], self.max_residues, self.cfg.get("heldout_fraction", 0.05), self.cfg.get("skip_invalid")
        )
        if data.info["sha256"] != split["sha256"]:
            raise UserError(
                f"--data {self.cfg['spec']}: {data.info['source']} has changed since the run was started "
                f"(SHA-256 {data.info['sha256'][:12]}..., the split was made from {split['sha256'][:12]}...)"
            )
        return data.train, data.heldout, data.info

    def heldout(self, run_dir: Path) -> torch.Tensor:
        _, seqs = proteins.load_heldout(run_dir, self.max_residues)
        return self.tokenizer().encode_padded(seqs, self.length)

    def train_records(self, run_dir: Path) -> list[str]:
        data = proteins.load_proteins(
            self.cfg["spec"], self.max_residues, self.cfg.get("heldout_fraction", 0.05), self.cfg.get("skip_invalid")
        )
        return data.train_seqs

    def template(self, template: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clamp mask, values and allowed tokens for a residue template with '_' at each free position.
        Markers and padding are clamped too, and free positions may only become residues, so the
        infilled protein has exactly the template's length."""
        if not template:
            raise UserError("--template: empty; give residues with '_' at each position to fill, e.g. M__KV_")
        if len(template) > self.max_residues:
            raise UserError(f"--template: {len(template)} positions, but this model holds at most {self.max_residues}")
        alphabet = set(proteins.AMINO_ACIDS)
        for i, c in enumerate(template):
            if c != "_" and c not in alphabet:
                raise UserError(
                    f"--template: {c!r} at position {i + 1} is neither a residue ({proteins.AMINO_ACIDS}) nor '_'"
                )
        tok = self.tokenizer()
        values = tok.encode_padded([template.replace("_", "A")], self.length)[0]
        clamp = torch.ones(self.length, dtype=torch.bool)
        for i, c in enumerate(template):
            if c == "_":
                clamp[i + 1] = False
        allowed = torch.zeros(tok.vocab_size, dtype=torch.bool)
        allowed[: len(proteins.AMINO_ACIDS)] = True
        return clamp, values, allowed

    def decode(self, ids: torch.Tensor) -> tuple[list[str], list[bool]]:
        tok = self.tokenizer()
        out = [tok.decode(row) for row in ids]
        return [t for t, _ in out], [v for _, v in out]


DOMAINS = {"protein": ProteinDomain}


def domain_for_spec(spec: str) -> str:
    if spec == "acyp" or Path(spec).suffix.lower() in {".fa", ".fasta", ".faa", ".fas"}:
        return "protein"
    raise UserError(f"--data {spec}: unknown data set; use 'acyp' or a FASTA file path (.fa, .fasta, .faa)")


def domain_from_config(data_cfg: dict):
    return DOMAINS[data_cfg["kind"]](data_cfg)
