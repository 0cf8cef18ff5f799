"""What a kind of data needs beyond token ids: how to load it, keep its split, and read it back.

A domain turns `--data` into training batches and held-out ids with a tokenizer, saves the split in
the run directory, and rebuilds tokenizer and held-out ids from the run directory for evaluation.
Three kinds: proteins (FASTA), text (TinyStories, tiny Shakespeare, text8, any .txt) and Sudoku.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .data import proteins
from .data.fasta import write_fasta
from .data.labels import FROM_HEADERS, encode_labels
from .data.splits import split_from_spec
from .data.tokenizers import CharTokenizer
from .errors import UserError
from .infill import Template, parse_template
from .registry import Registry
from .rundir import CONFIG, HELDOUT_FASTA, PROTEIN_SPLIT, VALID_FASTA, read_json
from .sampling import SampleSpec, draw_lengths

DEFAULT_VALIDATION_FRACTION = 0.05


class Domain:
    """A kind of data. `name` is the `kind` saved in a run's data config; `claims` says which `--data`
    values are this kind; `layout` and `positions` shape the network (networks.NetConfig)."""

    name: str
    supports_semi_ar = False
    layout = "sequence"
    positions = "rotary"
    token_unit = "tokens"  # what the real tokens of a record are, for the bits-per-token line
    length: int

    def __init__(self, data_cfg: dict, run_dir: Path):
        self.cfg, self.run_dir = data_cfg, Path(run_dir)

    @classmethod
    def claims(cls, spec: str) -> bool:
        """Is `--data spec` this kind of data?"""
        raise NotImplementedError

    @classmethod
    def config_from_flags(cls, spec: str, args) -> dict:
        """The data config of a new run: `--data spec` and this kind's own flags (argparse namespace)."""
        raise NotImplementedError

    def tokenizer(self):
        raise NotImplementedError

    def prepare(self) -> tuple[object, torch.Tensor, dict]:
        """(training ids or a step -> batch callable, held-out ids, info); saves the split in the run directory."""
        raise NotImplementedError

    def reload(self) -> tuple[object, torch.Tensor, dict]:
        """The same for a resumed run, checking that the data is still what the split was made from."""
        raise NotImplementedError

    def validation(self) -> torch.Tensor | None:
        """The validation part (checkpoint selection, early stopping), or None when the split has none."""
        return None

    def validation_labels(self, names: list[str]) -> torch.Tensor | None:
        return None

    def heldout(self) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, ids: torch.Tensor) -> tuple[list[str], list[bool]]:
        tok = self.tokenizer()
        out = [tok.decode(row) for row in ids]
        return [t for t, _ in out], [v for _, v in out]

    def template(self, text: str):
        raise UserError(f"--template: infilling is not supported for {self.name} runs")

    def write_samples(self, stem: Path, texts: list[str], valid: list[bool]) -> Path:
        path = stem.with_suffix(".txt")
        path.write_text(
            "".join(
                f"=== sample {i} (well formed: {v}) ===\n{t}\n"
                for i, (t, v) in enumerate(zip(texts, valid, strict=True))
            )
        )
        return path

    def describe(self, info: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in info.items() if isinstance(v, int))

    def record_layout(self, tokenizer) -> dict | None:
        """For records whose length a model learns apart from their content (p(x) = p(n) p(residues | n)):
        the process's support (the residue tokens; the markers are context), the padding id attention
        skips, and the number of lengths the length head covers. None when the data has no such records."""
        return None

    def frame(self, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, L] clamp and values of records with these residue counts: the markers and padding held,
        the residue positions free."""
        raise UserError(f"--length: {self.name} runs have no records of chosen length")

    def framed(self, spec: SampleSpec, net, n: int, seed: int, lengths: tuple[int, int] | None = None) -> SampleSpec:
        """The spec for n fresh samples: unchanged, unless the records' length is chosen first (see
        ProteinDomain.framed); `lengths` is the user's (min, max) residue range."""
        if lengths is not None:
            raise UserError(f"--length: {self.name} runs have no records of chosen length (see --semi-ar for text)")
        return spec

    def per_token_extras(self, bits_per_token: float) -> dict:
        """What a held-out figure in bits per token means in this data's own units (text: per character)."""
        return {}

    def training_extras(self) -> dict:
        """Reference figures of the training data for the end-of-training summary."""
        return {}

    # --- labels (a model of p(x | y), guidance/cfg.py) ---------------------------------------------
    def label_names(self) -> list[str] | None:
        """The label vocabulary of a new labelled run (the sorted labels of its records), or None."""
        return None

    def train_labels(self, names: list[str]) -> torch.Tensor | None:
        """[n] each training record's label index in `names` (the order of the training ids), or None."""
        return None

    def heldout_labels(self, names: list[str]) -> torch.Tensor | None:
        """[n] each held-out record's label index (the order of `heldout()`), or None."""
        return None


def split_config(args) -> dict:
    """A protein run's split flags, saved only when given, so a run's config is as before without them;
    a validation part of 5% comes with --split, --keep-best or --patience unless given otherwise."""
    cfg = {}
    if getattr(args, "split", None) is not None:
        cfg["split"] = split_from_spec(args.split).spec  # checked now: a bad spec stops before anything is written
    fraction = validation_fraction(args, default=bool(cfg))
    if fraction:
        cfg["validation_fraction"] = fraction
    if getattr(args, "train_records", None) is not None:
        cfg["train_records"] = args.train_records
    return cfg


def validation_fraction(args, default: bool = False) -> float | None:
    """--validation-fraction, or 5% when a flag that chooses on a validation part (--keep-best,
    --patience, or `default`) asks for one."""
    fraction = getattr(args, "validation_fraction", None)
    if fraction is None and (default or getattr(args, "keep_best", False) or getattr(args, "patience", None)):
        fraction = DEFAULT_VALIDATION_FRACTION
    return fraction


def refuse_labels(
    domain: type[Domain],
    args,
    split_flags: tuple[str, ...] = ("split", "validation_fraction", "train_records"),
    labels: bool = False,
) -> None:
    """--labels and --label-dropout are for data whose records carry labels (FASTA, and text files with
    `labels`); the split flags (`split_flags`) for a family of records (FASTA) too."""
    if labels and getattr(args, "labels", None) == FROM_HEADERS:
        raise UserError(f"--labels {FROM_HEADERS}: FASTA headers only; {domain.name} data takes a labels file")
    if not labels and (getattr(args, "labels", None) is not None or getattr(args, "label_dropout", None) is not None):
        raise UserError(f"--labels: labelled records are read from FASTA or text files, not {domain.name} data")
    for flag in split_flags:
        if getattr(args, flag, None) is not None:
            raise UserError(f"--{flag.replace('_', '-')}: applies to FASTA data only, not {domain.name} data")


DOMAINS: Registry[type[Domain]] = Registry("kind of data")


@DOMAINS.register
class ProteinDomain(Domain):
    name = "protein"
    token_unit = "residues + end markers"

    @classmethod
    def claims(cls, spec):
        return spec == "acyp" or Path(spec).suffix.lower() in {".fa", ".fasta", ".faa", ".fas"}

    @classmethod
    def config_from_flags(cls, spec, args):
        return {
            "spec": spec,
            "kind": cls.name,
            "max_residues": args.max_len,
            "heldout_fraction": args.heldout_fraction,
            "skip_invalid": args.skip_invalid,
            "length_model": not args.fixed_window,
            # present only in a labelled run, so an unlabelled run's config is as before
            **({"labels": args.labels} if getattr(args, "labels", None) is not None else {}),
            **split_config(args),
        }

    @property
    def max_residues(self) -> int:
        return self.cfg.get("max_residues", 127)

    @property
    def length(self) -> int:
        return self.max_residues + 2  # start and end markers

    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(proteins.RESIDUES, markers=True)

    def record_layout(self, tokenizer):
        """Runs since length-aware modelling: the residues move, the markers and padding are context
        (runs before it, or with --fixed-window, model the padded window as one sequence)."""
        if not self.cfg.get("length_model", False):
            return None
        return {"support": len(tokenizer.alphabet), "pad_id": tokenizer.pad_id, "length_classes": self.max_residues}

    def framed(self, spec, net, n, seed, lengths=None):
        """Draw each sample's length, then hold its frame (markers and padding) so that the sampler fills
        exactly n residues: every sample is well formed by construction. A length-aware model draws n from
        its own p(n), renormalised to `lengths` (min, max); a model without a length head (a fixed
        window, AR) takes one given length, its free positions restricted to residues. A template
        (spec.clamp) has already fixed the frame. A record ends at its end marker, padding after it, which
        lets a left-to-right sampler stop when every sequence has ended."""
        if spec.clamp is not None:
            return spec
        tokenizer = self.tokenizer()
        spec = replace(spec, end_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        low, high = lengths or (1, self.max_residues)
        if not 1 <= low <= high <= self.max_residues:
            raise UserError(f"--length {low}:{high}: this model holds 1 to {self.max_residues} residues")
        log_p = net.length_log_probs() if hasattr(net, "length_log_probs") else None
        if log_p is not None:
            chosen = draw_lengths(log_p, n, low, high, torch.Generator().manual_seed(seed))
            clamp, values = self.frame(chosen)
            return replace(spec, clamp=clamp, clamp_values=values)
        if lengths is None:
            return spec  # a fixed window decides its length by where it puts its end marker
        if low != high:
            raise UserError(f"--length {low}:{high}: a range needs a length-aware run (its p(n)); give one length")
        clamp, values = self.frame(torch.full((n,), low))
        return replace(spec, clamp=clamp, clamp_values=values, allowed=self.residue_tokens())

    def residue_tokens(self) -> torch.Tensor:
        """[V] True for the residues: what a free position of a record may become."""
        allowed = torch.zeros(self.tokenizer().vocab_size, dtype=torch.bool)
        allowed[: len(proteins.RESIDUES)] = True
        return allowed

    def frame(self, lengths):
        return self.tokenizer().frame(lengths, self.length)

    _data: proteins.ProteinData | None = None  # the records, read once per command

    def _load(self) -> proteins.ProteinData:
        if self._data is None:
            plan = proteins.SplitPlan(
                self.cfg.get("split"),
                self.cfg.get("heldout_fraction", 0.05),
                self.cfg.get("validation_fraction", 0.0),
                self.cfg.get("train_records"),
                self.run_dir if (self.run_dir / PROTEIN_SPLIT).is_file() else None,
            )
            self._data = proteins.load_proteins(
                self.cfg["spec"],
                self.max_residues,
                skip_invalid=self.cfg.get("skip_invalid"),
                labels=self.cfg.get("labels"),
                plan=plan,
            )
        return self._data

    def label_names(self):
        data = self._load()
        if data.train_labels is None:
            return None
        return sorted(set(data.train_labels) | set(data.heldout_labels))

    def train_labels(self, names):
        labels = self._load().train_labels
        return None if labels is None else encode_labels(labels, names, f"--labels {self.cfg['labels']}")

    def heldout_labels(self, names):
        if not self.cfg.get("labels"):
            return None
        path = self.run_dir / HELDOUT_FASTA
        return encode_labels(proteins.load_heldout_labels(self.run_dir, self.max_residues), names, str(path))

    def prepare(self):
        data = self._load()
        proteins.save_split(data, self.run_dir)
        return data.train, data.heldout, data.info

    def reload(self):
        split = json.loads((self.run_dir / PROTEIN_SPLIT).read_text())
        data = self._load()
        if data.info["sha256"] != split["sha256"]:
            raise UserError(
                f"--data {self.cfg['spec']}: {data.info['source']} has changed since the run was started "
                f"(SHA-256 {data.info['sha256'][:12]}..., the split was made from {split['sha256'][:12]}...)"
            )
        return data.train, data.heldout, data.info

    def heldout(self) -> torch.Tensor:
        _, seqs = proteins.load_heldout(self.run_dir, self.max_residues)
        return self.tokenizer().encode_padded(seqs, self.length)

    def validation(self):
        if not (self.run_dir / VALID_FASTA).is_file():
            return None
        _, seqs = proteins.load_heldout(self.run_dir, self.max_residues, VALID_FASTA)
        return self.tokenizer().encode_padded(seqs, self.length)

    def validation_labels(self, names):
        if not self.cfg.get("labels") or not (self.run_dir / VALID_FASTA).is_file():
            return None
        labels = proteins.load_heldout_labels(self.run_dir, self.max_residues, VALID_FASTA)
        return encode_labels(labels, names, str(self.run_dir / VALID_FASTA))

    def train_records(self) -> list[str]:
        return self._load().train_seqs

    def training_extras(self) -> dict:
        """The entropy of the training residues' composition: what a model that learned only residue
        frequencies would score, in bits per residue."""
        counts = Counter("".join(self.train_records()))
        total = sum(counts.values())
        return {"composition_entropy_bits": -sum(c / total * math.log2(c / total) for c in counts.values())}

    def write_samples(self, stem: Path, texts: list[str], valid: list[bool]) -> Path:
        path = stem.with_suffix(".fasta")
        write_fasta(path, [f"sample_{i} valid={v}" for i, v in enumerate(valid)], texts)
        return path

    def describe(self, info: dict) -> str:
        split = f"; split {info['split']}" if "split" in info else ""
        valid = f", {info['validation']} validation" if info.get("validation") else ""
        return (
            f"{info['train']} training{valid} and {info['heldout']} held-out records "
            f"({info['duplicates_removed']} duplicates removed, {info['skipped_invalid']} invalid skipped{split})"
        )

    def template(self, text: str) -> Template:
        """A residue template: '_' one free residue, '_{a,b}' a gap of a to b residues (see infill.py)."""
        template = parse_template(text, proteins.RESIDUES)
        if not template.gaps or all(g.low == g.high for g in template.gaps):
            n = len(template.layout(tuple(g.low for g in template.gaps)))
            if n > self.max_residues:
                raise UserError(f"--template: {n} positions, but this model holds at most {self.max_residues}")
        return template

    def template_frames(self, template: Template, arrangements: list[tuple[int, ...]]):
        """[A, L] clamp and values, one row per arrangement of the gaps: markers, padding and given residues
        held, gap positions free (and allowed only residues)."""
        tok = self.tokenizer()
        layouts = [template.layout(a) for a in arrangements]
        values = tok.encode_padded([t.replace("_", "A") for t in layouts], self.length)
        clamp = torch.ones_like(values, dtype=torch.bool)
        for row, layout in enumerate(layouts):
            free = [i + 1 for i, c in enumerate(layout) if c == "_"]
            clamp[row, free] = False
        return clamp, values


@DOMAINS.register
class TextDomain(Domain):
    """Packed sequences of text; every position is a real token. Bits per character come from the
    held-out characters per token that the split recorded."""

    name = "text"
    supports_semi_ar = True
    NAMES = ("tinystories", "tinyshakespeare", "text8")

    @classmethod
    def claims(cls, spec):
        return spec in cls.NAMES or Path(spec).suffix.lower() == ".txt"

    @classmethod
    def config_from_flags(cls, spec, args):
        refuse_labels(cls, args, split_flags=("split", "train_records"), labels=True)  # --max-docs: text's subset
        fraction = validation_fraction(args)
        return {
            "spec": spec,
            "kind": cls.name,
            "tokenizer": args.tokenizer,
            "seq_len": args.seq_len,
            "max_docs": args.max_docs,
            # present only with a validation part or labels, so a run's config is as before without them
            **({"validation_fraction": fraction} if fraction else {}),
            **({"labels": args.labels} if getattr(args, "labels", None) is not None else {}),
        }

    @property
    def length(self) -> int:
        return self.cfg.get("seq_len", self.cfg.get("block_size", 256))  # block_size: runs before the rename

    _tokenizer = None  # set by prepare(), before the run's config exists

    def tokenizer(self):
        from .data.text import tokenizer_from_config

        if self._tokenizer is None:
            config = read_json(self.run_dir / CONFIG)
            self._tokenizer = tokenizer_from_config(config["tokenizer"], self.run_dir)
        return self._tokenizer

    def _read(self):
        from .data import text

        cfg = self.cfg
        return text.load_text(
            cfg["spec"], cfg.get("tokenizer", "char"), self.length, self.run_dir, cfg.get("max_docs"),
            cfg.get("validation_fraction", 0.0), cfg.get("labels"),
        )  # fmt: skip

    def prepare(self):
        from .data import text

        data = self._read()
        text.save_split(data, self.run_dir)
        self._tokenizer, self._data = data.tokenizer, data
        return data.train, data.heldout, data.info

    def reload(self):
        from .data import text

        data, saved = self._read(), text.load_saved(self.run_dir)
        same_validation = (saved.validation is None) == (data.validation is None) and (
            saved.validation is None or torch.equal(saved.validation, data.validation)
        )
        if not torch.equal(saved.heldout, data.heldout) or not same_validation:
            raise UserError(f"--data {self.cfg['spec']}: the text has changed since the run was started")
        if saved.info.get("labels_sha256") != data.info.get("labels_sha256"):  # the training labels too
            raise UserError(f"--labels {self.cfg['labels']}: the labels have changed since the run was started")
        self._data = data
        return data.train, data.heldout, data.info

    _data = None  # what prepare() or reload() read: the training sequences' labels

    def _labels(self) -> dict[str, list[str]] | None:
        """Each part's sequence labels, as prepare() or reload() read them; None for an unlabelled run."""
        if not self.cfg.get("labels"):
            return None
        self._data = self._data or self._read()
        return self._data.labels

    def label_names(self):
        labels = self._labels()
        return None if labels is None else sorted({y for part in labels.values() for y in part})

    def train_labels(self, names):
        labels = self._labels()
        return None if labels is None else encode_labels(labels["train"], names, f"--labels {self.cfg['labels']}")

    def _saved_labels(self, part: str, names: list[str]) -> torch.Tensor | None:
        from .data import text

        if not self.cfg.get("labels"):
            return None
        return encode_labels(text.load_saved(self.run_dir).labels[part], names, str(self.run_dir / text.TEXT_SPLIT))

    def heldout_labels(self, names):
        return self._saved_labels("heldout", names)

    def validation_labels(self, names):
        return self._saved_labels("validation", names) if "validation_fraction" in self.cfg else None

    def heldout(self) -> torch.Tensor:
        from .data import text

        return text.load_saved(self.run_dir).heldout

    def validation(self):
        from .data import text

        return text.load_saved(self.run_dir).validation if "validation_fraction" in self.cfg else None

    def per_token_extras(self, bits_per_token: float) -> dict:
        """Bits per character = bits per token / characters per token of the held-out split."""
        from .data import text

        chars_per_token = text.load_saved(self.run_dir).info["heldout_chars_per_token"]
        return {"chars_per_token": chars_per_token, "bits_per_char": bits_per_token / chars_per_token}

    def describe(self, info: dict) -> str:
        return (
            f"{info.get('train_sequences', '?')} training"
            + (f", {info['validation']['sequences']} validation" if "validation" in info else "")
            + f" and {info.get('heldout_sequences', '?')} held-out sequences of {self.length} tokens"
        )


class SudokuStream:
    """An endless stream of valid solved grids: batch `step` is a pure function of (seed, step), so a
    resumed run sees exactly the grids it would have seen. Digits 1..9 are tokens 0..8."""

    def __init__(self, batch_size: int, seed: int):
        self.batch_size, self.seed = batch_size, seed

    def __call__(self, step: int) -> torch.Tensor:
        from .data.sudoku import random_solutions

        grids = random_solutions(self.batch_size, np.random.default_rng([self.seed, step]))
        return torch.from_numpy(grids.astype(np.int64) - 1)


@DOMAINS.register
class SudokuDomain(Domain):
    name = "sudoku"
    length = 81
    layout = "sudoku"
    positions = "sinusoidal"  # cells are their row, column and box embeddings (see networks.py)

    @classmethod
    def claims(cls, spec):
        return spec == "sudoku" or spec.startswith("sudoku:")

    @classmethod
    def config_from_flags(cls, spec, args):
        refuse_labels(cls, args)
        # the stream of generated grids is seeded by the run
        return {
            "spec": spec,
            "kind": cls.name,
            "batch_size": args.batch_size or TrainConfig.batch_size,
            "seed": args.seed,
        }

    HELDOUT_SEED = 2_000_003  # far from any training seed

    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer("123456789", markers=False)

    def prepare(self):
        from .data import sudoku

        spec = self.cfg["spec"]
        heldout = self.heldout()
        if spec.startswith("sudoku:"):
            path = spec.split(":", 1)[1]
            pairs = sudoku.read_puzzles(path)
            if not pairs:
                raise UserError(f"--data {spec}: {path} holds no puzzles")
            train = torch.from_numpy(np.stack([s for _, s in pairs]).astype(np.int64) - 1)
            info = {"source": spec, "train": len(train), "heldout": len(heldout)}
            return train, heldout, info
        info = {"source": "generated stream", "train": "endless", "heldout": len(heldout)}
        return SudokuStream(self.cfg["batch_size"], self.cfg["seed"]), heldout, info

    reload = prepare

    def heldout(self) -> torch.Tensor:
        from .data.sudoku import random_solutions

        grids = random_solutions(512, np.random.default_rng(self.HELDOUT_SEED))
        return torch.from_numpy(grids.astype(np.int64) - 1)

    def describe(self, info: dict) -> str:
        return f"Sudoku: training grids from {info['source']}, {info['heldout']} held-out solved grids"

    def puzzles(self, path: str | None, givens: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(puzzles, solutions) as [n, 81] tokens, blanks as -1: read from a file or generated."""
        from .data import sudoku

        pairs = sudoku.read_puzzles(path) if path else sudoku.generate_puzzles(n, seed, givens=givens)
        if not pairs:
            raise UserError(f"--puzzles {path}: the file holds no puzzles")
        puzzles = torch.from_numpy(np.stack([p for p, _ in pairs]).astype(np.int64) - 1)
        solutions = torch.from_numpy(np.stack([s for _, s in pairs]).astype(np.int64) - 1)
        return puzzles, solutions


def domain_class(spec: str) -> type[Domain]:
    """The kind of data `--data spec` names."""
    for cls in DOMAINS.values():
        if cls.claims(spec):
            return cls
    raise UserError(
        f"--data {spec}: unknown data set; use acyp or a FASTA file (.fa, .fasta, .faa), tinystories, "
        "tinyshakespeare, text8 or a .txt file, or sudoku / sudoku:PUZZLES.csv"
    )


def domain_from_config(data_cfg: dict, run_dir: Path) -> Domain:
    return DOMAINS[data_cfg["kind"]](data_cfg, run_dir)
