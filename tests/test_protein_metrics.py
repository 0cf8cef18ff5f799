"""Tests for ddlm.evaluate.protein: hand-computed values on tiny inputs and a synthetic protein family."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter

import numpy as np
import pytest

from ddlm.errors import UserError
from ddlm.evaluate import protein as P

AA = P.AMINO_ACIDS


def _needs(*modules: str) -> None:
    for m in modules:
        pytest.importorskip(m)


def _family(rng: np.random.Generator, n: int, length: int = 80, rate: float = 0.10) -> list[str]:
    """Members of a synthetic family: one random ancestor, each position substituted with prob ``rate``."""
    ancestor = rng.integers(0, 20, size=length)
    out = []
    for _ in range(n):
        seq = ancestor.copy()
        hit = rng.random(length) < rate
        # a substitution always changes the residue: add 1..19 modulo 20
        seq[hit] = (seq[hit] + rng.integers(1, 20, size=hit.sum())) % 20
        out.append("".join(AA[i] for i in seq))
    return out


def _random_seqs(rng: np.random.Generator, n: int, length: int = 80) -> list[str]:
    return ["".join(AA[i] for i in rng.integers(0, 20, size=length)) for _ in range(n)]


# ------------------------------------------------------------------------------------------ validity


def test_validity_counts_empty_bad_letters_and_too_long():
    seqs = ["ACD", "", "ACZ", "AAAAA", "ACX", "acd"]
    # valid: "ACD", "ACX"; "" empty, Z and lower case not in alphabet, "AAAAA" longer than 4
    assert P.validity(seqs, max_len=4) == pytest.approx(2 / 6)
    assert P.validity(seqs, max_len=5) == pytest.approx(3 / 6)


# ---------------------------------------------------------------------------------- composition KL


def test_composition_kl_hand_computed_and_direction():
    # pseudocount 1 on each of 20 letters. reference "AA": P(A)=3/22, others 1/22.
    # samples "AC": Q(A)=2/22, Q(C)=2/22, others 1/22.
    # KL(P||Q) = 3/22 log2(3/2) + 1/22 log2(1/2)
    expected = (3 * math.log2(1.5) - 1) / 22
    assert P.composition_kl(["AC"], ["AA"], pseudocount=1.0) == pytest.approx(expected, rel=1e-12)
    # the other direction is a different number: KL(Q||P) = 2/22 log2(2/3) + 2/22 log2(2)
    reverse = (2 * math.log2(2 / 3) + 2) / 22
    assert P.composition_kl(["AA"], ["AC"], pseudocount=1.0) == pytest.approx(reverse, rel=1e-12)
    assert not math.isclose(expected, reverse)


def test_composition_kl_ignores_x_and_is_zero_for_same_composition():
    expected = (3 * math.log2(1.5) - 1) / 22
    assert P.composition_kl(["AXC"], ["XAA"], pseudocount=1.0) == pytest.approx(expected, rel=1e-12)
    # same residue counts (the pseudocount weighs the same) -> 0
    assert P.composition_kl(["ACDW", "AC"], ["WDCA", "CA"]) == pytest.approx(0.0, abs=1e-15)


def test_composition_kl_pseudocount_scales():
    # pseudocount 0.5: reference "AA" -> P(A)=2.5/12, others 0.5/12; samples "AC" -> Q(A)=Q(C)=1.5/12
    expected = 2.5 / 12 * math.log2(2.5 / 1.5) + 0.5 / 12 * math.log2(0.5 / 1.5)
    assert P.composition_kl(["AC"], ["AA"], pseudocount=0.5) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------ k-mer JS


def test_kmer_js_hand_computed():
    # k=1: P = {A: 1/2, C: 1/2}, Q = {A: 1}, M = {A: 3/4, C: 1/4}
    kl_pm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_qm = math.log2(1 / 0.75)
    expected = 0.5 * kl_pm + 0.5 * kl_qm
    assert P.kmer_js(["AC"], ["AA"], k=1) == pytest.approx(expected, rel=1e-12)
    # k=2, same distributions: "ACA" -> {AC, CA}; "ACXA" -> {AC} (CX and XA skipped)
    assert P.kmer_js(["ACA"], ["ACXA"], k=2) == pytest.approx(expected, rel=1e-12)
    # disjoint supports -> exactly 1 bit
    assert P.kmer_js(["AAAA"], ["CCCC"], k=1) == pytest.approx(1.0, rel=1e-12)
    assert P.kmer_js(["ACD"], ["DCA"], k=3) == pytest.approx(1.0, rel=1e-12)


def test_kmer_js_does_not_count_across_sequences():
    # P over {"AC","CA"}: 1/2 each (no "CC" junction k-mer); Q over {"AC","CC","CA"}: 1/3 each
    p = {"AC": 0.5, "CA": 0.5}
    q = {"AC": 1 / 3, "CC": 1 / 3, "CA": 1 / 3}
    m = {key: (p.get(key, 0) + q[key]) / 2 for key in q}
    expected = 0.5 * sum(v * math.log2(v / m[key]) for key, v in p.items()) + 0.5 * sum(
        v * math.log2(v / m[key]) for key, v in q.items()
    )
    assert P.kmer_js(["AC", "CA"], ["ACCA"], k=2) == pytest.approx(expected, rel=1e-12)


def test_kmer_js_symmetric_and_zero_for_identical():
    rng = np.random.default_rng(1)
    a, b = _random_seqs(rng, 5, 30), _random_seqs(rng, 7, 25)
    for k in (1, 2, 3):
        assert P.kmer_js(a, b, k) == pytest.approx(P.kmer_js(b, a, k), rel=1e-12)
        assert P.kmer_js(a, b, k) > 0
        assert P.kmer_js(a, list(a), k) == pytest.approx(0.0, abs=1e-12)
        assert 0 <= P.kmer_js(a, b, k) <= 1


def test_kmer_js_rejects_bad_input():
    with pytest.raises(UserError, match=r"samples\[1\].*'B'.*position 2"):
        P.kmer_js(["ACD", "ACB"], ["ACD"], k=1)
    with pytest.raises(UserError, match="k must be"):
        P.kmer_js(["ACD"], ["ACD"], k=0)


# ------------------------------------------------------------------------------------- length W1


def test_length_distance_hand_computed():
    # equal sizes: mean |sorted difference| = (|1-2| + |2-2| + |3-4|) / 3
    assert P.length_distance(["A", "AA", "AAA"], ["CC", "CC", "CCCC"]) == pytest.approx(2 / 3)
    # {1} vs {1, 3}: |F - G| = 1/2 on [1, 3) -> 1
    assert P.length_distance(["A"], ["C", "CCC"]) == pytest.approx(1.0)
    assert P.length_distance(["C", "CCC"], ["A"]) == pytest.approx(1.0)
    # {1,1,4} vs {2,3}: on [1,2): |2/3 - 0|, [2,3): |2/3 - 1/2|, [3,4): |2/3 - 1| -> 2/3 + 1/6 + 1/3
    assert P.wasserstein_1d([1, 1, 4], [2, 3]) == pytest.approx(2 / 3 + 1 / 6 + 1 / 3)
    assert P.length_distance(["ACD"], ["WWW"]) == 0.0


# ------------------------------------------------------------------------------------- alignments


def test_identity_identical_and_hand_computed_pairs():
    _needs("parasail")
    s = "MKTAYIAKQRQISFVKSHFSRQ"
    assert P.pairwise_identity(s, s) == 1.0
    # one deletion: ACDEFGHIKL / ACDEF-HIKL -> 9 identical of 10 columns
    assert P.pairwise_identity("ACDEFGHIKL", "ACDEFHIKL") == pytest.approx(0.9)
    # one substitution: 4 of 5
    assert P.pairwise_identity("ACDEF", "ACDWF") == pytest.approx(0.8)
    # --GG---- / AAGGAAAA: 2 identical of 8 columns; leading end gaps count too
    assert P.pairwise_identity("GG", "AAGGAAAA") == pytest.approx(0.25)
    assert P.pairwise_identity("AAGGAAAA", "GG") == pytest.approx(0.25)
    # X/X is not an identity: 2 of 3
    assert P.pairwise_identity("AXC", "AXC") == pytest.approx(2 / 3)


def test_nearest_identity_picks_the_best_training_sequence():
    _needs("parasail")
    train = ["MMMMWWWW", "ACDEFHIKL", "AAGGAAAA"]
    out = P.nearest_identity(["ACDEFGHIKL", "GG"], train)
    assert out["per_sample"] == pytest.approx([0.9, 0.25])
    assert out["mean"] == pytest.approx(0.575)
    assert out["train_subsampled"] is False and out["n_train_used"] == 3
    assert P.nearest_identity(["ACDEFGHIKL"], [*train, "ACDEFGHIKL"])["per_sample"] == [1.0]


def test_nearest_identity_max_train_subsample_is_seeded_and_reported():
    _needs("parasail")
    rng = np.random.default_rng(3)
    train = _random_seqs(rng, 12, 20)
    samples = _random_seqs(rng, 3, 20)
    a = P.nearest_identity(samples, train, max_train=4, seed=7)
    b = P.nearest_identity(samples, train, max_train=4, seed=7)
    full = P.nearest_identity(samples, train, max_train=None)
    assert a == b
    assert a["train_subsampled"] is True and a["n_train_used"] == 4 and a["n_train_total"] == 12
    assert full["train_subsampled"] is False
    # a max over a subset can only be lower
    assert all(x <= y + 1e-12 for x, y in zip(a["per_sample"], full["per_sample"], strict=True))


def test_mean_pairwise_identity_hand_computed():
    _needs("parasail")
    # pairs: identical (1.0), deletion (0.9), deletion (0.9)
    seqs = ["ACDEFGHIKL", "ACDEFGHIKL", "ACDEFHIKL"]
    assert P.mean_pairwise_identity(seqs) == pytest.approx((1.0 + 0.9 + 0.9) / 3)
    with pytest.raises(UserError):
        P.mean_pairwise_identity(["ACD"])


def test_pair_indices_are_distinct_upper_triangle():
    i, j = P._pair_indices(6, 15, np.random.default_rng(0))
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    assert pairs == {(a, b) for a in range(6) for b in range(a + 1, 6)}
    i, j = P._pair_indices(50, 100, np.random.default_rng(1))
    assert (i < j).all() and (j < 50).all() and len(set(zip(i.tolist(), j.tolist(), strict=True))) == 100


# -------------------------------------------------------------------------------------------- HMM


def test_hmm_hits_family_members_but_not_random_sequences():
    _needs("pyfamsa", "pyhmmer")
    rng = np.random.default_rng(0)
    family = _family(rng, 60)
    train, members = family[:40], family[40:]
    random_seqs = _random_seqs(rng, 40)
    assert P.hmm_hit_fraction(members, train, n_align=40, evalue=1e-5) >= 0.95
    assert P.hmm_hit_fraction(random_seqs, train, n_align=40, evalue=1e-5) <= 0.05


# ------------------------------------------------------------------------------------------ shuffle


def test_shuffle_preserves_composition_and_length():
    rng = np.random.default_rng(0)
    seqs = _random_seqs(rng, 10, 40) + ["AAAA", "X"]
    shuffled = P.shuffle_sequences(seqs, np.random.default_rng(5))
    assert [Counter(s) for s in shuffled] == [Counter(s) for s in seqs]
    assert sum(a != b for a, b in zip(seqs, shuffled, strict=True)) >= 9
    assert shuffled == P.shuffle_sequences(seqs, np.random.default_rng(5))
    assert P.composition_kl(shuffled, seqs) == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------------------------------- report


def test_protein_report_rows_and_json():
    _needs("parasail", "pyfamsa", "pyhmmer")
    rng = np.random.default_rng(2)
    family = _family(rng, 70)
    train, heldout, samples = family[:40], family[40:60], family[60:70] + ["", "ACB"]
    rep = P.protein_report(samples, train, heldout, seed=0, n_align=40, max_pairs=20)
    json.dumps(rep, allow_nan=False)
    assert set(rep) == {"samples", "natural", "shuffled", "settings"}
    s, nat, shuf = rep["samples"], rep["natural"], rep["shuffled"]
    assert s["n"] == 12 and s["n_valid"] == 10 and s["validity"] == pytest.approx(10 / 12)
    assert rep["settings"]["n_reference"] == 10 and nat["n"] == 10
    # natural row compares two disjoint halves: not the trivial 0
    assert nat["kmer_js_bits"]["3"] > 0 and nat["composition_kl_bits"] > 0
    # shuffling keeps composition and lengths exactly, destroys order and family signal
    assert shuf["composition_kl_bits"] == pytest.approx(nat["composition_kl_bits"], rel=1e-12)
    assert shuf["length_w1"] == nat["length_w1"]
    assert shuf["kmer_js_bits"]["3"] > nat["kmer_js_bits"]["3"]
    assert nat["hmm_hit_fraction"] >= 0.9 and s["hmm_hit_fraction"] >= 0.9
    assert shuf["hmm_hit_fraction"] <= 0.1
    assert nat["nearest_train_identity"]["mean"] > shuf["nearest_train_identity"]["mean"] + 0.3
    assert nat["mean_pairwise_identity"] > shuf["mean_pairwise_identity"]


# ----------------------------------------------------------------------------- missing dependencies


@pytest.mark.parametrize(
    ("module", "call"),
    [
        ("parasail", lambda: P.pairwise_identity("ACD", "ACD")),
        ("pyfamsa", lambda: P.hmm_hit_fraction(["ACDEF"], ["ACDEF", "ACDEW"])),
        ("pyhmmer.plan7", lambda: P.hmm_hit_fraction(["ACDEF"], ["ACDEF", "ACDEW"])),
    ],
)
def test_missing_optional_package_raises_user_error(monkeypatch, module, call):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(UserError) as err:
        call()
    assert module.split(".")[0] in str(err.value) and "ddlm[proteins]" in str(err.value)
