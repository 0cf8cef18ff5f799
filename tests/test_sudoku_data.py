"""Tests for ddlm.data.sudoku: solver, random grids, puzzle generation, rating and file I/O.

Checks that matter are done independently of the module: grid validity with one-hot counts, and
uniqueness with a small set-based solver written here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddlm.data import sudoku as S
from ddlm.errors import UserError

# The Wikipedia "Sudoku" example puzzle and its published solution.
CLASSIC = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
CLASSIC_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
# A well-known hard puzzle (Arto Inkala, 2012): it needs search beyond singles.
HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."


def grid(text: str) -> np.ndarray:
    return np.array([0 if ch in ".0" else int(ch) for ch in text], dtype=np.int8)


# ---------------------------------------------------------------------------------------------------
# Independent reference checks.


def units_ok(grids: np.ndarray) -> np.ndarray:
    """[n] bool: every row, column and box of each [81] grid holds each digit 1..9 exactly once.

    Uses one-hot counts, unlike the module's sort-based validator.
    """
    g = np.asarray(grids).reshape(-1, 9, 9).astype(np.int64)
    in_range = ((g >= 1) & (g <= 9)).all(axis=(1, 2))
    onehot = np.eye(10, dtype=np.int64)[np.clip(g, 0, 9)][..., 1:]  # [n, 9, 9, 9 digits]
    rows = onehot.sum(axis=2)  # [n, row, digit]
    cols = onehot.sum(axis=1)  # [n, col, digit]
    boxes = onehot.reshape(-1, 3, 3, 3, 3, 9).sum(axis=(2, 4)).reshape(-1, 9, 9)  # [n, box, digit]
    ok = in_range.copy()
    for counts in (rows, cols, boxes):
        ok &= (counts == 1).all(axis=(1, 2))
    return ok


def reference_count(puzzle: np.ndarray, limit: int = 2) -> int:
    """Count solutions up to `limit` with sets (independent of the module's bitmask search)."""
    g = [int(v) for v in puzzle]

    def peers_values(i: int) -> set[int]:
        r, c = divmod(i, 9)
        br, bc = 3 * (r // 3), 3 * (c // 3)
        vals = {g[9 * r + k] for k in range(9) if 9 * r + k != i}
        vals |= {g[9 * k + c] for k in range(9) if 9 * k + c != i}
        vals |= {g[9 * (br + a) + bc + b] for a in range(3) for b in range(3) if 9 * (br + a) + bc + b != i}
        return vals

    if any(g[i] and g[i] in peers_values(i) for i in range(81)):
        return 0
    found = 0

    def rec() -> bool:
        nonlocal found
        empties = [i for i in range(81) if g[i] == 0]
        if not empties:
            found += 1
            return found >= limit
        options = {i: [d for d in range(1, 10) if d not in peers_values(i)] for i in empties}
        best = min(empties, key=lambda i: len(options[i]))
        for d in options[best]:
            g[best] = d
            if rec():
                return True
        g[best] = 0
        return False

    rec()
    return found


# ---------------------------------------------------------------------------------------------------
# Solver.


def test_classic_puzzle_has_unique_known_solution():
    p = grid(CLASSIC)
    sol = grid(CLASSIC_SOLUTION)
    # The reference solution is itself checked, so the test does not trust a transcription.
    assert units_ok(sol[None])[0]
    assert ((p == 0) | (p == sol)).all()
    assert reference_count(p) == 1
    assert S.count_solutions(p) == 1
    assert np.array_equal(S.solve(p), sol)
    assert np.array_equal(S.unique_solution(p), sol)
    assert S.solve(p).dtype == np.int8


def test_hard_puzzle_solved():
    p = grid(HARD)
    sol = S.unique_solution(p)
    assert sol is not None
    assert units_ok(sol[None])[0]
    assert ((p == 0) | (p == sol)).all()


def test_empty_grid_has_many_solutions():
    empty = np.zeros(81, dtype=np.int8)
    assert S.count_solutions(empty) == 2
    assert S.count_solutions(empty, limit=5) == 5
    assert S.unique_solution(empty) is None
    sol = S.solve(empty)
    assert sol is not None and units_ok(sol[None])[0]


def test_contradictory_puzzles_have_no_solution():
    clash = grid(CLASSIC)
    clash[2] = 5  # second 5 in row 1
    assert S.count_solutions(clash) == 0
    assert S.solve(clash) is None
    assert S.unique_solution(clash) is None
    # No duplicate givens, but cell (0, 0) has no candidate: row 0 holds 1..8, column 0 holds 9.
    dead = np.zeros(81, dtype=np.int8)
    dead[1:9] = np.arange(1, 9)
    dead[9] = 9
    assert reference_count(dead) == 0
    assert S.count_solutions(dead) == 0


def test_count_solutions_rejects_bad_input():
    with pytest.raises(ValueError):
        S.count_solutions(np.zeros(80, dtype=np.int8))
    with pytest.raises(ValueError):
        S.count_solutions(np.full(81, 10))
    with pytest.raises(ValueError):
        S.count_solutions(np.zeros(81, dtype=np.int8), limit=0)


def test_is_valid_solution():
    sol = grid(CLASSIC_SOLUTION)
    assert S.is_valid_solution(sol)
    swapped = sol.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # rows stay valid, columns break
    assert not S.is_valid_solution(swapped)
    assert not S.is_valid_solution(grid(CLASSIC))  # blanks
    assert not S.is_valid_solution(sol[:80])
    # Latin square that is not a sudoku: rows and columns fine, boxes repeat.
    latin = np.array([(r + c) % 9 + 1 for r in range(9) for c in range(9)], dtype=np.int8)
    assert not S.is_valid_solution(latin)


# ---------------------------------------------------------------------------------------------------
# Random solutions.


def test_random_solutions_valid_diverse_deterministic():
    n = 3000
    a = S.random_solutions(n, np.random.default_rng(7))
    assert a.shape == (n, 81) and a.dtype == np.int8
    assert units_ok(a).all()
    assert len({row.tobytes() for row in a}) == n
    # The symmetries must actually be applied: each cell sees every digit about equally often.
    counts = np.stack([(a == d).sum(axis=0) for d in range(1, 10)])  # [9 digits, 81 cells]
    assert counts.min() > n / 9 * 0.6 and counts.max() < n / 9 * 1.4
    b = S.random_solutions(n, np.random.default_rng(7))
    assert np.array_equal(a, b)
    c = S.random_solutions(n, np.random.default_rng(8))
    assert not np.array_equal(a, c)


def test_random_solutions_one_base_per_grid():
    a = S.random_solutions(50, np.random.default_rng(3), grids_per_base=1)
    assert units_ok(a).all()
    assert S.random_solutions(0, np.random.default_rng(0)).shape == (0, 81)


# ---------------------------------------------------------------------------------------------------
# Puzzle generation and rating.


def test_generate_puzzles_unique_consistent_deterministic():
    pairs = S.generate_puzzles(5, seed=123, givens=30)
    assert len(pairs) == 5
    for puzzle, solution in pairs:
        assert puzzle.shape == (81,) and puzzle.dtype == np.int8
        assert units_ok(solution[None])[0]
        assert ((puzzle == 0) | (puzzle == solution)).all()
        n_givens = int((puzzle > 0).sum())
        assert 17 <= n_givens <= 30
        assert reference_count(puzzle) == 1
    again = S.generate_puzzles(5, seed=123, givens=30)
    for (p1, s1), (p2, s2) in zip(pairs, again, strict=True):
        assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
    other = S.generate_puzzles(5, seed=124, givens=30)
    assert not all(np.array_equal(p1, p2) for (p1, _), (p2, _) in zip(pairs, other, strict=True))


def test_make_puzzle_stops_at_minimal_puzzle():
    rng = np.random.default_rng(5)
    sol = S.random_solutions(1, rng)[0]
    puzzle, solution = S.make_puzzle(rng, givens=0, solution=sol)
    assert np.array_equal(solution, sol)
    assert ((puzzle == 0) | (puzzle == sol)).all()
    assert reference_count(puzzle) == 1
    # Asked for 0 clues, it must stop only when every remaining clue is needed for uniqueness.
    for i in np.flatnonzero(puzzle):
        reduced = puzzle.copy()
        reduced[i] = 0
        assert S.count_solutions(reduced) == 2


def test_make_puzzle_keeps_requested_givens_when_easy():
    puzzle, solution = S.make_puzzle(np.random.default_rng(1), givens=60)
    assert int((puzzle > 0).sum()) == 60
    assert S.count_solutions(puzzle) == 1
    assert ((puzzle == 0) | (puzzle == solution)).all()


def test_rate():
    easy = S.rate(grid(CLASSIC))
    assert easy["givens"] == 30
    assert easy["solutions"] == 1
    assert easy["singles_only"] and easy["naked_singles_only"]
    assert easy["guesses"] == 0
    assert easy["level"] == "easy"
    hard = S.rate(grid(HARD))
    assert hard["givens"] == 21
    assert hard["solutions"] == 1
    assert not hard["singles_only"]
    assert hard["guesses"] > 0 and hard["nodes"] > easy["nodes"]
    assert hard["level"] == "hard"
    empty = S.rate(np.zeros(81, dtype=np.int8))
    assert empty["solutions"] == 2 and empty["level"] == "invalid" and not empty["singles_only"]


def test_rate_singles_claim_is_true():
    """A puzzle rated solvable by singles is solvable by a plain singles loop written here."""

    units = [[(r, c) for c in range(9)] for r in range(9)]
    units += [[(r, c) for r in range(9)] for c in range(9)]
    units += [[(3 * (b // 3) + a, 3 * (b % 3) + e) for a in range(3) for e in range(3)] for b in range(9)]

    def candidates(g: np.ndarray, r: int, c: int) -> set[int]:
        if g[r, c]:
            return set()
        br, bc = 3 * (r // 3), 3 * (c // 3)
        used = set(g[r].tolist()) | set(g[:, c].tolist()) | set(g[br : br + 3, bc : bc + 3].ravel().tolist())
        return set(range(1, 10)) - used

    def singles_fill(p: np.ndarray) -> bool:
        g = p.astype(np.int64).reshape(9, 9).copy()
        while not (g > 0).all():
            cand = {(r, c): candidates(g, r, c) for r in range(9) for c in range(9)}
            step = next(((rc, min(ds)) for rc, ds in cand.items() if len(ds) == 1), None)
            if step is None:  # no naked single: look for a hidden one
                step = next(
                    (
                        (spots[0], d)
                        for unit in units
                        for d in range(1, 10)
                        if len(spots := [rc for rc in unit if d in cand[rc]]) == 1
                    ),
                    None,
                )
            if step is None:
                return False
            g[step[0]] = step[1]
        return True

    for puzzle, _ in S.generate_puzzles(4, seed=9, givens=28):
        r = S.rate(puzzle)
        assert r["solutions"] == 1
        if r["naked_singles_only"]:
            assert r["singles_only"]
        assert singles_fill(puzzle) == r["singles_only"]


# ---------------------------------------------------------------------------------------------------
# Text and files.


def test_format_grid():
    text = S.format_grid(grid(CLASSIC))
    lines = text.splitlines()
    assert len(lines) == 11
    assert lines[0] == "5 3 . | . 7 . | . . ."
    assert lines[3] == "------+-------+------"
    assert "".join(ch for ch in text if ch.isdigit() or ch == ".") == CLASSIC


def test_write_read_round_trip(tmp_path):
    pairs = S.generate_puzzles(3, seed=1, givens=30)
    path = tmp_path / "p.csv"
    S.write_puzzles(path, pairs)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(len(line) == 163 and line[81] == "," for line in lines)
    back = S.read_puzzles(path)
    assert len(back) == 3
    for (p1, s1), (p2, s2) in zip(pairs, back, strict=True):
        assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
        assert p2.dtype == np.int8 and s2.dtype == np.int8


def test_write_rejects_inconsistent_pair(tmp_path):
    p = grid(CLASSIC)
    s = grid(CLASSIC_SOLUTION)
    p[2] = s[2] % 9 + 1  # a given that disagrees with the solution
    with pytest.raises(ValueError):
        S.write_puzzles(tmp_path / "x.csv", [(p, s)])


def test_read_blanks_headers_comments_and_puzzle_only_lines(tmp_path):
    dotted = CLASSIC
    zeroed = CLASSIC.replace(".", "0")
    path = tmp_path / "mixed.csv"
    path.write_text(
        "# a comment before the header\n"
        "\n"
        "quizzes,solutions\n"
        f"{dotted},{CLASSIC_SOLUTION}\n"
        f"  {zeroed} , {CLASSIC_SOLUTION}  \r\n"
        "# puzzle-only next\n"
        f"{dotted}\n"
        f"{zeroed}\n"
    )
    pairs = S.read_puzzles(path)
    assert len(pairs) == 4
    for p, s in pairs:
        assert np.array_equal(p, grid(CLASSIC))
        assert np.array_equal(s, grid(CLASSIC_SOLUTION))
    header_only = tmp_path / "h.csv"
    header_only.write_text("puzzle,solution\n")
    assert S.read_puzzles(header_only) == []


BAD_LINES = {
    "short puzzle": CLASSIC[:80] + "," + CLASSIC_SOLUTION,
    "long puzzle": CLASSIC + "1," + CLASSIC_SOLUTION,
    "bad puzzle char": "x" + CLASSIC[1:] + "," + CLASSIC_SOLUTION,
    "bad solution char": CLASSIC + "," + CLASSIC_SOLUTION[:80] + "a",
    "blank in solution": CLASSIC + "," + CLASSIC_SOLUTION[:80] + "0",
    "short solution": CLASSIC + "," + CLASSIC_SOLUTION[:79],
    # First two digits swapped: every row still holds 1..9, but two columns repeat a digit.
    "invalid solution grid": "0" * 81 + "," + CLASSIC_SOLUTION[1::-1] + CLASSIC_SOLUTION[2:],
    "solution disagrees": "6" + CLASSIC[1:] + "," + CLASSIC_SOLUTION,
    "too many fields": CLASSIC + "," + CLASSIC_SOLUTION + "," + CLASSIC_SOLUTION,
    "no solution": "55" + CLASSIC[2:],
    "several solutions": "0" * 81,
    "header not first": "quizzes,solutions",
    "empty field": "," + CLASSIC_SOLUTION,
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_read_malformed_line_names_file_and_line(tmp_path, case):
    path = tmp_path / "bad.csv"
    path.write_text(f"# comment\n{CLASSIC},{CLASSIC_SOLUTION}\n\n{BAD_LINES[case]}\n{CLASSIC}\n")
    with pytest.raises(UserError) as info:
        S.read_puzzles(path)
    msg = str(info.value)
    assert f"{path}:4:" in msg
    assert "\n" not in msg


def test_read_missing_and_non_utf8_files(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(UserError, match="nope.csv"):
        S.read_puzzles(missing)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe" + CLASSIC.encode() + b"\n")
    with pytest.raises(UserError, match="bin.csv"):
        S.read_puzzles(binary)


# Lines that are near-misses of valid records reach the deep checks; free text covers the rest.
_VALID = f"{CLASSIC},{CLASSIC_SOLUTION}"


def _mutate(edits: list[tuple[int, str]], cut: int | None, drop_solution: bool) -> str:
    chars = list(_VALID)
    for pos, ch in edits:
        chars[pos] = ch
    line = "".join(chars)
    if drop_solution:
        line = line.split(",")[0]
    return line if cut is None else line[:cut]


_edits = st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.sampled_from(list("0123456789.,# x"))), max_size=4)
_mutated = st.builds(_mutate, _edits, st.one_of(st.none(), st.integers(0, len(_VALID))), st.booleans())
_free_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_mutated, _free_text), max_size=5))
def test_read_random_lines_only_user_error(lines):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "random.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            pairs = S.read_puzzles(path)
        except UserError as e:
            assert str(path) in str(e)
            return
        for p, s in pairs:
            assert units_ok(s[None])[0]
            assert ((p == 0) | (p == s)).all()
