"""Infilling templates, with gaps whose length the model chooses.

A template is given residues and gaps: `_` is one free residue, `_{a,b}` a gap of a to b residues and
`_{n}` a gap of exactly n. An *arrangement* gives every gap a length, and so fixes the record's length
n and the positions of the given residues. For an exact model

    p(arrangement | given) proportional to p(n) p(given residues at their positions | n),

and the second factor is, by the chain rule, the product over the given residues, revealed one at a
time in any order, of p(residue | the residues revealed before it), with the gaps and the residues
not yet revealed masked: a masked diffusion model's conditionals in any order (any-order
autoregression). `arrangement_nll` scores every arrangement so (one random order per arrangement,
exact for exact conditionals whatever the order; for a trained model one draw of its NELBO over
orders); each sample then draws its arrangement from the posterior, and the sampler fills the gaps.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch

from .errors import UserError

MAX_ARRANGEMENTS = 4096  # scoring is one network pass per given residue over all arrangements
GAP = re.compile(r"_\{([^{}]*)\}")


@dataclass(frozen=True)
class Gap:
    low: int
    high: int


@dataclass
class Template:
    """A template's given residues (strings) and gaps, in order."""

    parts: list[str | Gap]

    @property
    def gaps(self) -> list[Gap]:
        return [p for p in self.parts if isinstance(p, Gap)]

    def arrangements(self, max_residues: int) -> list[tuple[int, ...]]:
        """Every choice of gap lengths whose record fits the model (1 to max_residues residues)."""
        given = sum(len(p) for p in self.parts if isinstance(p, str))
        ranges = [range(g.low, g.high + 1) for g in self.gaps]
        out = [a for a in itertools.product(*ranges) if 1 <= given + sum(a) <= max_residues]
        if not out:
            raise UserError(f"--template: no choice of gap lengths gives 1 to {max_residues} residues")
        if len(out) > MAX_ARRANGEMENTS:
            raise UserError(f"--template: {len(out)} choices of gap lengths; at most {MAX_ARRANGEMENTS} are scored")
        return out

    def layout(self, lengths: tuple[int, ...]) -> str:
        """The record with these gap lengths: given residues, and '_' at each free position."""
        filled = iter(lengths)
        return "".join(p if isinstance(p, str) else "_" * next(filled) for p in self.parts)


def parse_template(text: str, alphabet: str) -> Template:
    """Given residues (letters of `alphabet`), `_`, `_{n}` and `_{min,max}`; errors name the position."""
    if not text:
        raise UserError("--template: empty; give residues with '_' at each position to fill, e.g. M__KV_")
    parts: list[str | Gap] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "_" and text.startswith("_{", i):
            gap, i = parse_gap(text, i)
            parts.append(gap)
            continue
        if c == "_":
            parts.append(Gap(1, 1))
        elif c in alphabet:
            parts.append(c)
        else:
            raise UserError(f"--template: {c!r} at position {i + 1} is neither a residue ({alphabet}) nor '_'")
        i += 1
    merged: list[str | Gap] = []
    for p in parts:  # runs of given residues as one string
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        else:
            merged.append(p)
    return Template(merged)


def parse_gap(text: str, start: int) -> tuple[Gap, int]:
    """The gap `_{n}` or `_{min,max}` at text[start:], and the index after it."""
    match = GAP.match(text, start)
    where = f"--template: the gap at position {start + 1}"
    if match is None:
        raise UserError(f"{where} is not closed: write _{{n}} or _{{min,max}}")
    numbers = match.group(1).split(",")
    if len(numbers) > 2 or not all(n.strip().isdigit() for n in numbers):
        raise UserError(f"{where}, {match.group(0)!r}, is not _{{n}} or _{{min,max}} with whole numbers")
    low, high = int(numbers[0]), int(numbers[-1])
    if low > high:
        raise UserError(f"{where}, {match.group(0)!r}: MIN {low} is greater than MAX {high}")
    return Gap(low, high), match.end()


@torch.inference_mode()
def arrangement_nll(net, objective, clamp: torch.Tensor, values: torch.Tensor, generator=None) -> torch.Tensor:
    """[A] -log p(n) - log p(given tokens | the rest masked), nats, one row per arrangement.

    clamp, values [A, L]: the frame of each arrangement (given positions held, gaps free). The given
    tokens are the held ones the process moves (a length-aware record's residues; all held tokens of
    a fixed window); they are revealed one per network call, in a random order per row, each scored
    by the model's conditional at its position with everything not yet revealed masked."""
    process = objective.process
    given = clamp & process.moves(values)
    x = torch.where(given | ~clamp, process.mask_id, values)
    ranks = torch.where(given, torch.rand(given.shape, generator=generator, device=given.device), 2.0)
    order = ranks.argsort(-1)  # the given positions first, in a random order
    counts = given.sum(-1)
    rows = torch.arange(len(x), device=x.device)
    nll = objective.length_nll(net, values).double()
    for step in range(int(counts.max())):
        active = step < counts
        position = order[:, step]
        masked = (x == process.mask_id).sum(-1)
        t = (masked / process.moves(values).sum(-1).clamp(min=1)).clamp(1e-3, 1.0)  # the masked fraction
        sbar = objective.schedule.total(t.double()).float()
        s = objective.log_score(objective.network(net, x, sbar), x, sbar[:, None, None]).exp()
        probs = s[rows, position] / s[rows, position].sum(-1, keepdim=True)
        token = values[rows, position]
        step_nll = -torch.log(probs[rows, token.clamp(max=probs.shape[-1] - 1)].double().clamp(min=1e-300))
        nll += torch.where(active, step_nll, 0.0)
        x[rows[active], position[active]] = token[active]
    return nll


def choose_arrangements(nll: torch.Tensor, n: int, generator=None) -> torch.Tensor:
    """[n] indices of arrangements drawn from the posterior exp(-nll) / Z."""
    return torch.multinomial(torch.softmax(-nll, dim=0), n, replacement=True, generator=generator)
