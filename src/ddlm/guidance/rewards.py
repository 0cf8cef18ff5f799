"""Rewards: a number per decoded sample, higher is better, for reward-guided sampling (particles.py).

A reward reads the texts the run's domain decodes (protein residues, Sudoku's 81 digits, text) and
returns a float64 tensor, one finite value per text. A user names one by a SPEC string, `KIND` or
`KIND:ARGUMENT`, parsed by `parse_reward`; each kind is a small class registered by name:

    charge           net charge: +1 per K or R, -1 per D or E, +0.1 per H (histidine is about 10%
                     protonated at pH 7.4); the termini are not counted
    gravy            GRAVY: the mean Kyte-Doolittle hydropathy of the residues (X not counted)
    hmm:FILE         the full-sequence bit score of the first profile HMM in FILE (pyhmmer, filters off)
    regex:PATTERN    1 if PATTERN (Python `re`) occurs in the text, else 0
    sudoku           satisfied constraints of a grid: over the 27 units (rows, columns, boxes), the
                     number of distinct digits, so 243 exactly when the grid is solved
    py:MODULE:FUNC   a user's callable FUNC(texts) -> numbers, from an importable module or a .py file
    cap:VALUE:SPEC   min(SPEC's reward, VALUE): for a threshold target ("charge >= 5"), particles are
                     pushed until the property reaches VALUE and no further

Any Python callable taking a list of strings can also be wrapped directly (`CallableReward`, what the
Python API does with `reward=f`). A reward that raises, returns the wrong number of values or a value
that is not finite is a UserError naming the spec.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..registry import Registry


class Reward:
    """r(texts) -> [n] float64. `domains`: the kinds of data it reads (None: any)."""

    name: str
    domains: tuple[str, ...] | None = None
    argument: str | None = None  # what follows "KIND:" in a spec (FILE, PATTERN, ...); None: nothing does

    def __init__(self, spec: str, argument: str | None = None):
        self.spec = spec  # what the user typed, for error messages

    def values(self, texts: list[str]) -> Sequence[float]:
        raise NotImplementedError

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """The checked rewards of `texts`: a UserError naming the spec if the reward fails."""
        try:
            out = self.values(list(texts))
            values = torch.as_tensor(out, dtype=torch.float64).flatten()
        except UserError:
            raise
        except Exception as e:  # a user's reward may fail in any way; say which reward and how, in one line
            detail = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"--reward {self.spec}: raised {type(e).__name__}: {detail}".rstrip(": ")) from None
        if len(values) != len(texts):
            raise UserError(f"--reward {self.spec}: returned {len(values)} values for {len(texts)} samples")
        if not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).nonzero()[0])
            value = values[bad].item()
            raise UserError(f"--reward {self.spec}: returned {value} for sample {bad}; a reward must be finite")
        return values

    def refusal(self, domain: str) -> str | None:
        """Why this reward cannot read a `domain` run's samples, or None."""
        if self.domains is not None and domain not in self.domains:
            return f"--reward {self.spec}: reads {' or '.join(self.domains)} samples; this is a {domain} run"
        return None


REWARDS: Registry[type[Reward]] = Registry("reward")


@REWARDS.register
class Charge(Reward):
    """Net charge at pH about 7.4: K, R +1; D, E -1; H +0.1 (its side chain's pKa is about 6.0)."""

    name = "charge"
    domains = ("protein",)
    CHARGE = {"K": 1.0, "R": 1.0, "D": -1.0, "E": -1.0, "H": 0.1}

    def values(self, texts):
        return [sum(self.CHARGE.get(c, 0.0) for c in t) for t in texts]


@REWARDS.register
class Gravy(Reward):
    """GRAVY (Kyte and Doolittle 1982): sum of the residues' hydropathy / number of residues; X is
    left out of both; an empty record scores 0."""

    name = "gravy"
    domains = ("protein",)
    HYDROPATHY = {
        "A": 1.8, "R": -4.5, "N": -3.5, "D": -3.5, "C": 2.5, "Q": -3.5, "E": -3.5, "G": -0.4, "H": -3.2, "I": 4.5,
        "L": 3.8, "K": -3.9, "M": 1.9, "F": 2.8, "P": -1.6, "S": -0.8, "T": -0.7, "W": -0.9, "Y": -1.3, "V": 4.2,
    }  # fmt: skip

    def values(self, texts):
        out = []
        for t in texts:
            known = [self.HYDROPATHY[c] for c in t if c in self.HYDROPATHY]
            out.append(sum(known) / len(known) if known else 0.0)
        return out


@REWARDS.register
class Regex(Reward):
    """1 where PATTERN occurs anywhere in the text (`re.search`), 0 elsewhere."""

    name = "regex"
    argument = "PATTERN"

    def __init__(self, spec, argument=None):
        super().__init__(spec)
        try:
            self.pattern = re.compile(argument or "")
        except re.error as e:
            raise UserError(f"--reward {spec}: not a regular expression ({e})") from None
        if not argument:
            raise UserError("--reward regex:PATTERN: the pattern is empty")

    def values(self, texts):
        return [1.0 if self.pattern.search(t) else 0.0 for t in texts]


@REWARDS.register
class Sudoku(Reward):
    """Satisfied constraints "unit u holds digit d", over the 27 units (rows, columns, 3x3 boxes) and
    the 9 digits: 243 exactly when the grid is solved. Cell (r, c) is character 9 r + c."""

    name = "sudoku"
    domains = ("sudoku",)
    UNITS = (
        [[9 * r + c for c in range(9)] for r in range(9)]
        + [[9 * r + c for r in range(9)] for c in range(9)]
        + [[9 * (3 * (b // 3) + i // 3) + 3 * (b % 3) + i % 3 for i in range(9)] for b in range(9)]
    )

    def values(self, texts):
        out = []
        for t in texts:
            if len(t) != 81:
                raise UserError(f"--reward sudoku: a sample has {len(t)} cells, not 81")
            out.append(float(sum(len({t[i] for i in unit}) for unit in self.UNITS)))
        return out


@REWARDS.register
class ProfileHMM(Reward):
    """The full-sequence bit score of the first HMM in FILE against each sequence (pyhmmer's hmmsearch
    with its three filters and the bias filter off, so every sequence it finds a domain in is scored);
    a sequence without any domain scores `NO_DOMAIN` bits."""

    name = "hmm"
    domains = ("protein",)
    argument = "FILE"
    NO_DOMAIN = -100.0

    def __init__(self, spec, argument=None):
        super().__init__(spec)
        try:
            from pyhmmer import easel, plan7
        except ImportError:
            raise UserError(f"--reward {spec}: needs pyhmmer (pip install 'ddlm[proteins]')") from None
        self.easel, self.plan7 = easel, plan7
        path = Path(argument or "")
        if not argument or not path.is_file():
            raise UserError(f"--reward {spec}: no such file {str(path)!r}; give hmm:FILE, a profile HMM (hmmbuild)")
        try:
            with plan7.HMMFile(path) as f:
                self.hmm = f.read()
        except Exception as e:  # pyhmmer raises several kinds for a file that is not an HMM
            raise UserError(f"--reward {spec}: {path} is not a profile HMM file ({type(e).__name__})") from None
        if self.hmm is None:
            raise UserError(f"--reward {spec}: {path} holds no HMM")

    def values(self, texts):
        alphabet = self.hmm.alphabet
        block = self.easel.TextSequenceBlock(
            [self.easel.TextSequence(name=str(i).encode(), sequence=t) for i, t in enumerate(texts)]
        ).digitize(alphabet)
        pipeline = self.plan7.Pipeline(alphabet, bias_filter=False, F1=1.0, F2=1.0, F3=1.0, T=-1e9, domT=-1e9, Z=1)
        out = [self.NO_DOMAIN] * len(texts)
        for hit in pipeline.search_hmm(self.hmm, block):
            name = hit.name if isinstance(hit.name, bytes) else hit.name.encode()
            out[int(name)] = max(float(hit.score), self.NO_DOMAIN)
        return out


@REWARDS.register
class PythonReward(Reward):
    """`py:MODULE:FUNC` or `py:PATH.py:FUNC`: FUNC(list of texts) -> one number per text."""

    name = "py"
    argument = "MODULE:FUNCTION"

    def __init__(self, spec, argument=None):
        super().__init__(spec)
        module_name, _, func_name = (argument or "").rpartition(":")
        if not module_name or not func_name:
            raise UserError(f"--reward {spec}: write py:MODULE:FUNCTION or py:FILE.py:FUNCTION")
        module = load_module(module_name, spec)
        self.func = getattr(module, func_name, None)
        if not callable(self.func):
            raise UserError(f"--reward {spec}: {module_name} has no callable {func_name!r}")

    def values(self, texts):
        return self.func(texts)


@REWARDS.register
class Capped(Reward):
    """`cap:VALUE:SPEC`: min(r_SPEC(x), VALUE). Particles target p(x) exp(min(r(x), c) / lambda) / Z: every
    sample past the threshold c keeps its base-law weight relative to the others past it, so a target
    such as "net charge >= 5" is reached without pulling the samples to the property's extreme (where
    a family's sequences are rarest)."""

    name = "cap"
    argument = "VALUE:SPEC"

    def __init__(self, spec, argument=None):
        super().__init__(spec)
        value, _, inner = (argument or "").partition(":")
        try:
            self.cap = float(value)
        except ValueError:
            self.cap = math.nan
        if not math.isfinite(self.cap) or not inner:
            raise UserError(f"--reward {spec}: write cap:VALUE:SPEC with a finite VALUE, e.g. cap:5:charge")
        self.inner = parse_reward(inner)
        self.domains = self.inner.domains

    def values(self, texts):
        return self.inner(texts).clamp(max=self.cap)


class CallableReward(Reward):
    """Any Python callable f(texts) -> numbers (the Python API's `reward=f`)."""

    name = "callable"

    def __init__(self, func: Callable[[list[str]], Sequence[float]]):
        super().__init__(getattr(func, "__name__", repr(func)))
        self.func = func

    def values(self, texts):
        return self.func(texts)


def load_module(name: str, spec: str):
    """An importable module, or a .py file by its path (the current directory is searched first)."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"--reward {spec}: no such file {name!r}")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise UserError(f"--reward {spec}: importing {name} raised {type(e).__name__}: {e}") from None
        return module
    here = os.getcwd()
    sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    except Exception as e:  # ModuleNotFoundError, or the module's own error while importing
        raise UserError(f"--reward {spec}: cannot import {name!r} ({type(e).__name__}: {e})") from None
    finally:
        sys.path.remove(here)


def parse_reward(spec: str | Callable | Reward) -> Reward:
    """The reward a SPEC string names (`KIND` or `KIND:ARGUMENT`); a callable is wrapped as it is."""
    if isinstance(spec, Reward):
        return spec
    if callable(spec):
        return CallableReward(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("--reward: empty; give one of " + ", ".join(reward_forms()))
    kind, sep, argument = spec.partition(":")
    if kind not in REWARDS:
        raise UserError(f"--reward {spec}: unknown reward {kind!r}; use one of " + ", ".join(reward_forms()))
    cls = REWARDS[kind]
    if cls.argument and not sep:
        raise UserError(f"--reward {spec}: write {kind}:{cls.argument}")
    if not cls.argument and sep:
        raise UserError(f"--reward {spec}: {kind} takes no argument; write --reward {kind}")
    return cls(spec, argument if sep else None)


def reward_forms() -> list[str]:
    return [f"{n}:{c.argument}" if c.argument else n for n, c in sorted(REWARDS.items())]
