"""Sudoku grids: a solver, fast random solved grids, puzzle generation, rating, and file I/O.

Encoding
--------
A grid is a numpy ``int8`` array of shape ``[81]`` in row-major order: cell ``(r, c)`` (both 0-based)
is index ``9 * r + c``. Digits are ``1..9``; ``0`` means a blank cell. A *solution* has no blanks; a
*puzzle* is a solution with some cells blanked, and is proper when it has exactly one solution.

Boxes are numbered ``0..8`` row-major as well: cell ``(r, c)`` lies in box ``3 * (r // 3) + c // 3``.

On disk, one record per line: ``puzzle,solution`` with 81 characters each (``0`` or ``.`` for blanks in
the puzzle), or just the 81-character puzzle, which the reader solves. See `read_puzzles`.

The solver is a plain backtracking search over bitmasks (bit ``d`` set = digit ``d`` used) for rows,
columns and boxes, always branching on the blank cell with the fewest candidates. That makes forced
cells (naked singles) free and keeps the tree small enough for pure Python on 17+ clue puzzles.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from ddlm.errors import UserError

from .sources import read_user_text

__all__ = [
    "count_solutions",
    "format_grid",
    "generate_puzzles",
    "grid_to_string",
    "is_valid_solution",
    "make_puzzle",
    "parse_grid",
    "random_solutions",
    "rate",
    "read_puzzles",
    "solve",
    "unique_solution",
    "write_puzzles",
]

# ---------------------------------------------------------------------------------------------------
# Static tables. Plain Python lists: the search indexes them millions of times, and list indexing with
# Python ints is much faster than numpy scalar access.

_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [3 * (i // 27) + (i % 9) // 3 for i in range(81)]
_ALL = 0b1111111110  # bits 1..9: digit d <-> bit (1 << d); bit 0 unused so a digit is its own shift
_POPCOUNT = [bin(m).count("1") for m in range(1 << 10)]
_DIGITS = [[d for d in range(1, 10) if m >> d & 1] for m in range(1 << 10)]

# The 27 units (9 rows, 9 columns, 9 boxes) as lists of cell indices, for the singles-only solver.
_UNITS = (
    [[9 * r + c for c in range(9)] for r in range(9)]
    + [[9 * r + c for r in range(9)] for c in range(9)]
    + [[i for i in range(81) if _BOX[i] == b] for b in range(9)]
)

_PUZZLE_CHARS = frozenset("0123456789.")
_SOLUTION_CHARS = frozenset("123456789")


# ---------------------------------------------------------------------------------------------------
# Input checking shared by the public functions.


def _as_cells(grid: Sequence[int] | np.ndarray, what: str = "grid") -> list[int]:
    """Validate a grid and return it as a list of Python ints (what the search works on)."""
    arr = np.asarray(grid)
    if arr.shape != (81,):
        raise ValueError(f"{what} must have shape [81], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 9):
        raise ValueError(f"{what} values must be in 0..9")
    return [int(v) for v in arr.tolist()]


def _to_grid(cells: Sequence[int]) -> np.ndarray:
    return np.asarray(cells, dtype=np.int8)


# ---------------------------------------------------------------------------------------------------
# The search.


class _SearchResult:
    """What one search found. `count` is capped at the search limit."""

    __slots__ = ("count", "first", "nodes", "guesses", "aborted")

    def __init__(self) -> None:
        self.count = 0
        self.first: list[int] | None = None
        self.nodes = 0  # cells assigned a value during the search (each branch point counts once)
        self.guesses = 0  # branch points where the chosen cell had two or more candidates
        self.aborted = False  # hit max_nodes before finishing


def _search(
    cells: list[int],
    limit: int,
    orders: list[list[int]] | None = None,
    max_nodes: int | None = None,
) -> _SearchResult:
    """Count solutions of `cells` up to `limit`, remembering the first one found.

    `orders[i]`, when given, is the order in which digits are tried at cell i (randomised filling).
    `cells` is used as scratch space and restored only when the search runs to the end.
    """
    res = _SearchResult()
    rows = [0] * 9
    cols = [0] * 9
    boxes = [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            r, c, b = _ROW[i], _COL[i], _BOX[i]
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return res  # two equal givens in one unit: no solution
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    empties = [i for i, v in enumerate(cells) if v == 0]
    n = len(empties)
    ROW, COL, BOX, POP, DIGITS, ALL = _ROW, _COL, _BOX, _POPCOUNT, _DIGITS, _ALL  # locals are faster

    def rec(k: int) -> bool:
        """Fill empties[k:]; return True to stop the whole search."""
        if k == n:
            res.count += 1
            if res.first is None:
                res.first = cells.copy()
            return res.count >= limit
        # Most constrained cell first: fewest candidates, stopping early at 0 or 1.
        best_j = k
        best_n = 10
        best_m = 0
        for j in range(k, n):
            i = empties[j]
            m = ALL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
            cnt = POP[m]
            if cnt < best_n:
                best_j, best_n, best_m = j, cnt, m
                if cnt <= 1:
                    break
        if best_n == 0:
            return False
        # Swapping keeps empties[k+1:] exactly the still-blank cells below this node.
        empties[k], empties[best_j] = empties[best_j], empties[k]
        i = empties[k]
        r, c, b = ROW[i], COL[i], BOX[i]
        res.nodes += 1
        if best_n > 1:
            res.guesses += 1
        if max_nodes is not None and res.nodes > max_nodes:
            res.aborted = True
            return True
        digits = DIGITS[best_m] if orders is None else [d for d in orders[i] if best_m >> d & 1]
        for d in digits:
            bit = 1 << d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            cells[i] = d
            if rec(k + 1):
                return True
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        cells[i] = 0
        return False

    rec(0)
    return res


def count_solutions(puzzle: Sequence[int] | np.ndarray, limit: int = 2) -> int:
    """Number of solutions of `puzzle`, counting no further than `limit` (so the result is <= limit).

    `limit=2` is the usual uniqueness test: 0 = contradictory, 1 = proper puzzle, 2 = two or more.
    Givens that already clash (a digit twice in a unit) give 0.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return _search(_as_cells(puzzle, "puzzle"), limit).count


def solve(puzzle: Sequence[int] | np.ndarray) -> np.ndarray | None:
    """A solution of `puzzle` (the first one the search finds), or None if it has none.

    This does not check uniqueness; use `unique_solution` for that.
    """
    res = _search(_as_cells(puzzle, "puzzle"), 1)
    return None if res.first is None else _to_grid(res.first)


def unique_solution(puzzle: Sequence[int] | np.ndarray) -> np.ndarray | None:
    """The solution of `puzzle` if it has exactly one, else None (no solution or several)."""
    res = _search(_as_cells(puzzle, "puzzle"), 2)
    return _to_grid(res.first) if res.count == 1 and res.first is not None else None


def is_valid_solution(grid: Sequence[int] | np.ndarray) -> bool:
    """True when `grid` is a complete, valid sudoku: every row, column and box holds 1..9 once each."""
    arr = np.asarray(grid)
    if arr.shape != (81,) or not np.issubdtype(arr.dtype, np.integer):
        return False
    g = arr.astype(np.int64).reshape(9, 9)
    if g.min() < 1 or g.max() > 9:
        return False
    boxes = g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    want = np.arange(1, 10)
    # With all values in 1..9, "sorted unit == 1..9" is exactly "each digit once".
    return all(bool((np.sort(units, axis=1) == want).all()) for units in (g, g.T, boxes))


# ---------------------------------------------------------------------------------------------------
# Random solved grids.


def _random_base(rng: np.random.Generator) -> list[int]:
    """One solved grid from randomised backtracking on the empty grid.

    Digit order is random per cell; with most-constrained-first this almost never backtracks, but a
    node cap with restart guards against a rare long detour (the rng stream stays deterministic).
    """
    while True:
        orders = (np.argsort(rng.random((81, 9)), axis=1) + 1).tolist()
        res = _search([0] * 81, 1, orders=orders, max_nodes=2000)
        if res.first is not None:
            return res.first


def _random_perm_9(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 9] index permutations that keep bands (or stacks) together: shuffle the 3 bands and the 3
    lines within each band. These are exactly the row (column) permutations preserving validity."""
    bands = np.argsort(rng.random((n, 3)), axis=1)  # [n, 3]: which band goes to position p
    within = np.argsort(rng.random((n, 3, 3)), axis=2)  # [n, 3, 3]
    return (3 * bands[:, :, None] + within).reshape(n, 9)


def random_solutions(n: int, rng: np.random.Generator, grids_per_base: int = 64) -> np.ndarray:
    """`n` valid solved grids, shape [n, 81], dtype int8. Deterministic given the rng state.

    A few base grids (about one per `grids_per_base` outputs, at least one) come from randomised
    backtracking; each output is a base grid put through random validity-preserving symmetries:
    digit relabelling, band and row-within-band permutations, stack and column-within-stack
    permutations, and transposition. That group has 9! * 6^8 * 2 (~1.2e12) elements, so outputs are
    essentially never repeated, while the backtracking cost is paid only once per base grid.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if grids_per_base < 1:
        raise ValueError(f"grids_per_base must be >= 1, got {grids_per_base}")
    if n == 0:
        return np.zeros((0, 81), dtype=np.int8)
    n_base = -(-n // grids_per_base)
    bases = np.asarray([_random_base(rng) for _ in range(n_base)], dtype=np.int8).reshape(n_base, 9, 9)

    which = rng.integers(0, n_base, size=n)
    row_perm = _random_perm_9(rng, n)
    col_perm = _random_perm_9(rng, n)
    transpose = rng.random(n) < 0.5
    # Relabelling table: value 0 maps to 0 (never occurs in solutions), digits to a random permutation.
    relabel = np.zeros((n, 10), dtype=np.int8)
    relabel[:, 1:] = np.argsort(rng.random((n, 9)), axis=1) + 1

    g = bases[which]  # [n, 9, 9]
    g = np.where(transpose[:, None, None], g.transpose(0, 2, 1), g)
    g = g[np.arange(n)[:, None, None], row_perm[:, :, None], col_perm[:, None, :]]
    flat = g.reshape(n, 81).astype(np.intp)
    return np.take_along_axis(relabel, flat, axis=1)


# ---------------------------------------------------------------------------------------------------
# Puzzles: generation and rating.


def _has_other_solution(cells: list[int], i: int, v: int) -> bool:
    """Whether `cells` (in which cell i is blank) has a solution with cell i != v.

    The caller knows a solution with cell i == v exists, so this is the uniqueness test after blanking
    cell i. Searching for one solution per alternative digit is much cheaper than counting to 2.
    """
    used = 0
    r, c, b = _ROW[i], _COL[i], _BOX[i]
    for j, d in enumerate(cells):
        if d and (_ROW[j] == r or _COL[j] == c or _BOX[j] == b):
            used |= 1 << d
    alternatives = _DIGITS[_ALL & ~used & ~(1 << v)]
    for d in alternatives:
        trial = cells.copy()
        trial[i] = d
        if _search(trial, 1).count:
            return True
    return False


def make_puzzle(
    rng: np.random.Generator,
    givens: int,
    solution: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A proper puzzle (exactly one solution) with about `givens` clues, and its solution.

    Starting from `solution` (or a fresh random one), cells are tried for removal in random order; a
    removal is kept only if the puzzle still has exactly one solution. This stops as soon as `givens`
    clues remain. If it runs out of cells before that (the puzzle became minimal: every remaining clue
    is needed for uniqueness), the minimal puzzle is returned, so the actual number of givens is
    ``int((puzzle > 0).sum())`` and may exceed `givens`. Random removal usually bottoms out at 22-27.
    """
    if not 0 <= givens <= 81:
        raise ValueError(f"givens must be in 0..81, got {givens}")
    if solution is None:
        sol = random_solutions(1, rng)[0]
    else:
        sol = np.asarray(solution)
        if not is_valid_solution(sol):
            raise ValueError("solution is not a valid solved grid")
        sol = sol.astype(np.int8)
    cells = [int(v) for v in sol.tolist()]
    remaining = 81
    for i in rng.permutation(81).tolist():
        if remaining <= givens:
            break
        v = cells[i]
        cells[i] = 0
        if _has_other_solution(cells, i, v):
            cells[i] = v
        else:
            remaining -= 1
    return _to_grid(cells), sol.copy()


def generate_puzzles(
    n: int,
    seed: int,
    givens: int = 30,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` (puzzle, solution) pairs from `make_puzzle`, deterministic by `seed`.

    Every puzzle has exactly one solution and at most `givens` clues unless removal hit a minimal
    puzzle first (see `make_puzzle`).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    # One base grid per puzzle: puzzles from the same base are related, which would leak between splits.
    sols = random_solutions(n, rng, grids_per_base=1)
    return [make_puzzle(rng, givens, solution=s) for s in sols]


def _singles(cells: list[int]) -> tuple[bool, bool]:
    """Fill `cells` in place with naked and hidden singles only.

    Returns (solved, used_hidden): whether the grid got completely filled, and whether any hidden
    single was needed. Naked singles are always exhausted before a hidden single is tried, so
    ``solved and not used_hidden`` means naked singles alone suffice.
    """
    rows = [0] * 9
    cols = [0] * 9
    boxes = [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if (rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]]) & bit:
                return False, False
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit

    def place(i: int, d: int) -> None:
        bit = 1 << d
        cells[i] = d
        rows[_ROW[i]] |= bit
        cols[_COL[i]] |= bit
        boxes[_BOX[i]] |= bit

    def cand(i: int) -> int:
        return _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])

    used_hidden = False
    while True:
        # Naked singles until none is left.
        progress = True
        while progress:
            progress = False
            for i in range(81):
                if cells[i] == 0:
                    m = cand(i)
                    if m == 0:
                        return False, used_hidden  # contradiction: singles cannot finish
                    if _POPCOUNT[m] == 1:
                        place(i, _DIGITS[m][0])
                        progress = True
        if all(cells):
            return True, used_hidden
        # One hidden single, then back to naked singles (the cheaper, "easier" technique).
        found = False
        for unit in _UNITS:
            seen_once = 0
            seen_twice = 0
            placed = 0
            for i in unit:
                if cells[i]:
                    placed |= 1 << cells[i]
                else:
                    m = cand(i)
                    seen_twice |= seen_once & m
                    seen_once |= m
            if (seen_once | placed) != _ALL:
                return False, used_hidden  # some digit has nowhere to go in this unit
            only = seen_once & ~seen_twice
            if only:
                d = _DIGITS[only][0]
                i = next(i for i in unit if cells[i] == 0 and cand(i) >> d & 1)
                place(i, d)
                used_hidden = True
                found = True
                break
        if not found:
            return False, used_hidden


def rate(puzzle: Sequence[int] | np.ndarray) -> dict:
    """Difficulty measures of `puzzle`.

    Keys:
      givens              number of clues
      solutions           solutions counted up to 2 (0 none, 1 proper, 2 two or more)
      nodes               search nodes the solver used to establish `solutions` (cells assigned)
      guesses             of those, branch points where the chosen cell had 2+ candidates
      naked_singles_only  solvable by naked singles alone
      singles_only        solvable by naked and hidden singles alone
      level               "easy" (naked singles), "medium" (hidden singles too), "hard" (needs search
                          or further techniques), "invalid" (not exactly one solution)
    """
    cells = _as_cells(puzzle, "puzzle")
    res = _search(cells.copy(), 2)
    solved, used_hidden = _singles(cells.copy())
    if res.count != 1:
        level = "invalid"
    elif solved and not used_hidden:
        level = "easy"
    elif solved:
        level = "medium"
    else:
        level = "hard"
    return {
        "givens": sum(1 for v in cells if v),
        "solutions": res.count,
        "nodes": res.nodes,
        "guesses": res.guesses,
        "naked_singles_only": solved and not used_hidden,
        "singles_only": solved,
        "level": level,
    }


# ---------------------------------------------------------------------------------------------------
# Text form and files.


def parse_grid(text: str, allow_blanks: bool = True) -> np.ndarray:
    """An 81-character string to a grid; ``0`` or ``.`` are blanks when `allow_blanks`.

    Raises ValueError with a short reason (the file reader adds file and line).
    """
    if len(text) != 81:
        raise ValueError(f"expected 81 characters, got {len(text)}")
    allowed = _PUZZLE_CHARS if allow_blanks else _SOLUTION_CHARS
    for pos, ch in enumerate(text):
        if ch not in allowed:
            kind = "digits 0-9 or '.'" if allow_blanks else "digits 1-9"
            raise ValueError(f"bad character {ch!r} at position {pos + 1} (allowed: {kind})")
    return np.frombuffer(text.replace(".", "0").encode("ascii"), dtype=np.uint8).astype(np.int8) - ord("0")


def grid_to_string(grid: Sequence[int] | np.ndarray, blank: str = "0") -> str:
    """A grid as its 81-character string, with `blank` for empty cells."""
    return "".join(str(v) if v else blank for v in _as_cells(grid))


def format_grid(grid: Sequence[int] | np.ndarray) -> str:
    """A grid as 11 lines of text: 9 rows with '|' between stacks, '-' lines between bands, '.' blanks."""
    cells = _as_cells(grid)
    lines = []
    for r in range(9):
        if r in (3, 6):
            lines.append("------+-------+------")
        chars = [str(v) if v else "." for v in cells[9 * r : 9 * r + 9]]
        lines.append(" | ".join(" ".join(chars[s : s + 3]) for s in (0, 3, 6)))
    return "\n".join(lines)


_HEADER = re.compile(r"[A-Za-z_]")


def _parse_line(line: str) -> tuple[np.ndarray, np.ndarray]:
    """One record to (puzzle, solution); ValueError with the reason if it is malformed."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) > 2:
        raise ValueError(f"expected 'puzzle' or 'puzzle,solution', got {len(fields)} comma-separated fields")
    try:
        puzzle = parse_grid(fields[0], allow_blanks=True)
    except ValueError as e:
        raise ValueError(f"puzzle: {e}") from None
    if len(fields) == 2:
        try:
            solution = parse_grid(fields[1], allow_blanks=False)
        except ValueError as e:
            raise ValueError(f"solution: {e}") from None
        if not is_valid_solution(solution):
            raise ValueError("solution is not a valid sudoku (a row, column or box repeats a digit)")
        clash = np.flatnonzero((puzzle != 0) & (puzzle != solution))
        if clash.size:
            i = int(clash[0])
            raise ValueError(
                f"solution disagrees with the puzzle at row {i // 9 + 1}, column {i % 9 + 1} "
                f"(given {puzzle[i]}, solution {solution[i]})"
            )
        return puzzle, solution
    res = _search(_as_cells(puzzle), 2)
    if res.count == 0 or res.first is None:
        raise ValueError("puzzle has no solution")
    if res.count > 1:
        raise ValueError("puzzle has more than one solution")
    return puzzle, _to_grid(res.first)


def read_puzzles(path: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read (puzzle, solution) pairs from a text file, one record per line.

    A record is ``puzzle,solution`` (81 characters each; ``0`` or ``.`` mark blanks in the puzzle) or
    a bare 81-character puzzle, which is solved here and must have exactly one solution. Blank lines
    and lines starting with ``#`` are skipped. The first record line may be a header such as
    ``quizzes,solutions`` (its first field starts with a letter and is not 81 characters long).
    Anything else that is malformed raises UserError naming the file, the 1-based line and the fault.
    Given solutions are checked for validity and agreement with the givens, not for uniqueness.
    """
    name = os.fspath(path)
    lines = read_user_text(path).splitlines()

    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    first_record = True
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if first_record:
            first_record = False
            head = line.split(",")[0].strip()
            if _HEADER.match(head) and len(head) != 81:
                continue
        try:
            pairs.append(_parse_line(line))
        except ValueError as e:
            raise UserError(f"{name}:{lineno}: {e}") from None
    return pairs


def write_puzzles(path: str | os.PathLike, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``puzzle,solution`` lines (``0`` for blanks), readable by `read_puzzles`.

    Raises ValueError (a programming error, not user input) for a pair that is not a puzzle and a
    valid solution agreeing with its givens, so no unreadable file is ever written.
    """
    out = []
    for k, (puzzle, solution) in enumerate(pairs):
        p = np.asarray(puzzle)
        s = np.asarray(solution)
        _as_cells(p, f"puzzle {k}")
        if not is_valid_solution(s):
            raise ValueError(f"pair {k}: solution is not a valid solved grid")
        if ((p != 0) & (p != s)).any():
            raise ValueError(f"pair {k}: solution disagrees with the puzzle's givens")
        out.append(f"{grid_to_string(p)},{grid_to_string(s)}\n")
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.writelines(out)
