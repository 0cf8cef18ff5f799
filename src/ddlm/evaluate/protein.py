"""Offline metrics for generated protein sequences.

Every function takes plain Python lists of residue strings over the 20 standard amino acids
(``ACDEFGHIKLMNPQRSTVWY``) plus ``X`` (unknown residue), upper case. Distribution metrics (composition,
k-mers) ignore ``X``; the alignment metrics treat it as an ordinary BLOSUM62 letter but never count an
``X``/``X`` column as an identity.

Groups of metrics:

* quality of the strings themselves: :func:`validity`;
* distance between the sample distribution and a reference distribution: :func:`composition_kl`,
  :func:`kmer_js`, :func:`length_distance`;
* novelty (memorisation) against the training set: :func:`nearest_identity` (global alignment with
  parasail);
* diversity within the samples: :func:`mean_pairwise_identity`;
* family membership: :func:`hmm_hit_fraction` (pyfamsa multiple alignment -> pyhmmer profile HMM ->
  hmmsearch);
* the floor reference: :func:`shuffle_sequences`;
* everything at once, with a natural and a shuffled reference row: :func:`protein_report`.

The alignment and HMM metrics need the optional packages ``parasail``, ``pyfamsa`` and ``pyhmmer``
(``pip install 'ddlm[proteins]'``); they are imported only when used, and a missing one raises
:class:`ddlm.errors.UserError` naming it. The other metrics need only numpy.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..data.proteins import AMINO_ACIDS, RESIDUES
from ..errors import UserError

# AMINO_ACIDS, the 20 standard amino acids, give the order of composition vectors and k-mer indices.
ALPHABET = frozenset(RESIDUES)
"""Letters accepted in a valid sequence: the 20 amino acids plus ``X``."""

GAP_OPEN = 10
GAP_EXTEND = 1
"""Affine gap penalties for global alignment (parasail convention: a gap of length L costs
``GAP_OPEN + (L - 1) * GAP_EXTEND``), with the BLOSUM62 substitution matrix."""

EXTRA = "ddlm[proteins]"

_AA_INDEX = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(AMINO_ACIDS):
    _AA_INDEX[ord(_c)] = _i


# --------------------------------------------------------------------------------------------- helpers


def _require(module: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise `UserError` naming it and the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = package or module
        raise UserError(
            f"this protein metric needs the optional package '{pkg}', which is not installed; "
            f"install it with: pip install '{EXTRA}' (or: pip install {pkg})"
        ) from exc


def _is_valid(seq: str) -> bool:
    return len(seq) > 0 and set(seq) <= ALPHABET


def _check_seqs(seqs: Sequence[str], what: str, *, min_count: int = 1) -> list[str]:
    """Return ``seqs`` as a list, or raise `UserError` naming the first bad record."""
    if isinstance(seqs, str):
        raise UserError(f"{what}: expected a list of sequences, got a single string")
    out = list(seqs)
    if len(out) < min_count:
        raise UserError(f"{what}: need at least {min_count} sequence(s), got {len(out)}")
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise UserError(f"{what}[{i}]: expected a str, got {type(s).__name__}")
        if not s:
            raise UserError(f"{what}[{i}]: empty sequence")
        bad = set(s) - ALPHABET
        if bad:
            pos = next(j for j, c in enumerate(s) if c in bad)
            raise UserError(f"{what}[{i}]: letter {s[pos]!r} at position {pos} is not one of the 20 amino acids or X")
    return out


def _encode(seq: str) -> np.ndarray:
    """Indices 0..19 into `AMINO_ACIDS`; -1 for X (or anything else)."""
    return _AA_INDEX[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def _kmer_counts(seqs: Sequence[str], k: int) -> np.ndarray:
    """Counts of all 20**k k-mers, taken within each sequence (never across two); k-mers with X skipped."""
    counts = np.zeros(20**k, dtype=np.float64)
    weights = 20 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    for s in seqs:
        if len(s) < k:
            continue
        idx = _encode(s)
        win = np.lib.stride_tricks.sliding_window_view(idx, k)
        win = win[(win >= 0).all(axis=1)]
        if len(win):
            counts += np.bincount(win @ weights, minlength=20**k)
    return counts


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    """sum_i p_i log2(p_i / q_i) over p_i > 0 (q_i must be > 0 where p_i > 0)."""
    m = p > 0
    return float(np.sum(p[m] * np.log2(p[m] / q[m])))


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent, reproducible generator for one purpose (``stream``) of one ``seed``."""
    return np.random.default_rng([seed, stream])


def _subsample(seqs: list[str], n: int | None, rng: np.random.Generator) -> list[str]:
    """At most ``n`` sequences drawn without replacement (order preserved); all of them if n is None."""
    if n is None or len(seqs) <= n:
        return list(seqs)
    keep = np.sort(rng.choice(len(seqs), size=n, replace=False))
    return [seqs[i] for i in keep]


# ----------------------------------------------------------------------------------- string quality


def validity(seqs: Sequence[str], max_len: int) -> float:
    """Fraction of sequences that are valid.

    A sequence is valid when it is non-empty, every letter is one of the 20 amino acids or ``X``, and
    its length is at most ``max_len``: ``validity = #{s : 0 < |s| <= max_len, s in ALPHABET*} / N``.
    """
    seqs = list(seqs)
    if not seqs:
        raise UserError("validity: need at least one sequence, got 0")
    ok = sum(1 for s in seqs if isinstance(s, str) and _is_valid(s) and len(s) <= max_len)
    return ok / len(seqs)


# ---------------------------------------------------------------------------- distribution distances


def composition(seqs: Sequence[str], pseudocount: float = 1.0) -> np.ndarray:
    """Amino-acid composition with a pseudocount: ``p_a = (n_a + alpha) / (sum_b n_b + 20 alpha)``.

    ``n_a`` counts residue ``a`` over all sequences (``X`` is not counted); ``alpha = pseudocount``.
    Returned in the order of `AMINO_ACIDS`.
    """
    counts = _kmer_counts(list(seqs), 1) + pseudocount
    total = counts.sum()
    if total <= 0:
        raise UserError("composition: no amino acids to count and pseudocount is 0")
    return counts / total


def composition_kl(samples: Sequence[str], reference: Sequence[str], pseudocount: float = 1.0) -> float:
    """KL(reference || samples) of amino-acid composition, in bits.

    ``KL(P || Q) = sum_a P_a log2(P_a / Q_a)`` with ``P`` the reference composition and ``Q`` the sample
    composition, each smoothed by adding ``pseudocount`` (default 1) to each of the 20 residue counts
    before normalising (see :func:`composition`). This direction penalises samples that under-produce
    residues the reference uses. ``X`` is ignored. 0 iff the smoothed compositions are equal.
    """
    samples = _check_seqs(samples, "samples")
    reference = _check_seqs(reference, "reference")
    if pseudocount <= 0:
        raise UserError(f"composition_kl: pseudocount must be > 0, got {pseudocount}")
    return _kl_bits(composition(reference, pseudocount), composition(samples, pseudocount))


def kmer_js(samples: Sequence[str], reference: Sequence[str], k: int) -> float:
    """Jensen-Shannon divergence, in bits, between the k-mer frequency distributions.

    ``P`` and ``Q`` are the relative frequencies of the 20**k k-mers of samples and reference, counted
    with a sliding window inside each sequence (never across two sequences); k-mers containing ``X``
    are skipped. ``JS(P, Q) = KL(P || M) / 2 + KL(Q || M) / 2`` with ``M = (P + Q) / 2`` and base-2
    logarithms, so ``0 <= JS <= 1``; it is symmetric and 0 iff ``P == Q``. No pseudocount is needed.
    ``k`` must be 1, 2 or 3.
    """
    if k not in (1, 2, 3):
        raise UserError(f"kmer_js: k must be 1, 2 or 3, got {k}")
    samples = _check_seqs(samples, "samples")
    reference = _check_seqs(reference, "reference")
    cp, cq = _kmer_counts(samples, k), _kmer_counts(reference, k)
    if cp.sum() == 0 or cq.sum() == 0:
        which = "samples" if cp.sum() == 0 else "reference"
        raise UserError(f"kmer_js: {which} contain no {k}-mer without X")
    p, q = cp / cp.sum(), cq / cq.sum()
    m = (p + q) / 2
    return max(0.0, 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m))


def wasserstein_1d(u: Sequence[float], v: Sequence[float]) -> float:
    """1-D Wasserstein-1 distance between two empirical distributions: ``W1 = integral |F_u(x) - F_v(x)| dx``.

    ``F_u`` and ``F_v`` are the empirical CDFs; the integral is exact for step functions.
    """
    a = np.sort(np.asarray(u, dtype=np.float64))
    b = np.sort(np.asarray(v, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise UserError("wasserstein_1d: both samples must be non-empty")
    grid = np.sort(np.concatenate([a, b]))
    widths = np.diff(grid)
    fa = np.searchsorted(a, grid[:-1], side="right") / a.size
    fb = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * widths))


def length_distance(samples: Sequence[str], reference: Sequence[str]) -> float:
    """Wasserstein-1 distance, in residues, between the length distributions of samples and reference.

    ``W1 = integral |F_s(L) - F_r(L)| dL`` over the empirical CDFs of sequence length (see
    :func:`wasserstein_1d`); for equal-sized sets it is the mean absolute difference of sorted lengths.
    """
    samples, reference = list(samples), list(reference)
    if not samples or not reference:
        raise UserError("length_distance: samples and reference must be non-empty")
    return wasserstein_1d([len(s) for s in samples], [len(s) for s in reference])


# ---------------------------------------------------------------------------------- alignment metrics


class _Aligner:
    """Global (Needleman-Wunsch) alignment with parasail, BLOSUM62, affine gaps."""

    def __init__(self, gap_open: int = GAP_OPEN, gap_extend: int = GAP_EXTEND) -> None:
        self.parasail = _require("parasail")
        self.matrix = self.parasail.blosum62
        self.gap_open = gap_open
        self.gap_extend = gap_extend

    def identity(self, a: str, b: str) -> float:
        """Identical (non-X) aligned pairs / alignment columns, for the optimal global alignment.

        Alignment columns include end gaps. The identity is read from parasail's traceback rather than
        from the ``*_stats_*`` functions, whose ``length`` omits leading gap columns
        (jeffdaily/parasail-python#42).
        """
        ps = self.parasail
        res = ps.nw_trace_scan_16(a, b, self.gap_open, self.gap_extend, self.matrix)
        if res.saturated:  # 16-bit scores overflowed (very long sequences): redo with 32-bit lanes
            res = ps.nw_trace_scan_32(a, b, self.gap_open, self.gap_extend, self.matrix)
        tb = res.traceback
        comp = tb.comp
        matches = comp.count("|")
        if "X" in a and "X" in b:
            matches -= sum(1 for x, y in zip(tb.query, tb.ref, strict=True) if x == "X" and y == "X")
        return matches / len(comp)


def pairwise_identity(a: str, b: str, gap_open: int = GAP_OPEN, gap_extend: int = GAP_EXTEND) -> float:
    """Global-alignment identity of two sequences: ``#identical aligned pairs / #alignment columns``.

    The alignment is the optimal Needleman-Wunsch alignment under BLOSUM62 with affine gaps (a gap of
    length L costs ``gap_open + (L - 1) * gap_extend``), computed with parasail. Columns include end
    gaps, so a sequence against an exact copy of itself padded by n residues scores |a| / (|a| + n).
    ``X``/``X`` pairs are not counted as identical. 1 iff the sequences are equal and contain no ``X``.
    """
    a, b = _check_seqs([a, b], "pair")
    return _Aligner(gap_open, gap_extend).identity(a, b)


def nearest_identity(
    samples: Sequence[str],
    train: Sequence[str],
    max_train: int | None = 5000,
    seed: int = 0,
    gap_open: int = GAP_OPEN,
    gap_extend: int = GAP_EXTEND,
) -> dict[str, Any]:
    """Novelty: for each sample, the highest global-alignment identity to any training sequence.

    ``nn_i = max_j identity(sample_i, train_j)`` where identity is :func:`pairwise_identity`
    (identical aligned pairs / alignment columns including end gaps; BLOSUM62, gap open 10, extend 1).
    When ``len(train) > max_train``, the maximum is over a random subset of ``max_train`` training
    sequences drawn without replacement with ``numpy.random.default_rng([seed, 1])``, so ``nn_i`` is a
    lower bound of the maximum over the full set; the output says whether this happened.
    Cost: ``len(samples) * min(len(train), max_train)`` alignments (~15 us each for ~100-residue
    proteins), single-threaded.

    Returns a dict with ``mean`` and ``median`` of ``nn_i``, ``per_sample`` (list of ``nn_i``), and
    ``n_train_used``, ``n_train_total``, ``train_subsampled``, ``seed``.
    """
    samples = _check_seqs(samples, "samples")
    train = _check_seqs(train, "train")
    if max_train is not None and max_train < 1:
        raise UserError(f"nearest_identity: max_train must be >= 1 or None, got {max_train}")
    pool = _subsample(train, max_train, _rng(seed, 1))
    aligner = _Aligner(gap_open, gap_extend)
    pool_lens = [len(t) for t in pool]
    best: list[float] = []
    for s in samples:
        ls, top = len(s), 0.0
        for t, lt in zip(pool, pool_lens, strict=True):
            # identity <= min(|s|, |t|) / max(|s|, |t|): skip pairs that cannot beat the best so far
            if min(ls, lt) <= top * max(ls, lt):
                continue
            ident = aligner.identity(s, t)
            if ident > top:
                top = ident
                if top >= 1.0:
                    break
        best.append(top)
    return {
        "mean": float(np.mean(best)),
        "median": float(np.median(best)),
        "per_sample": best,
        "n_train_used": len(pool),
        "n_train_total": len(train),
        "train_subsampled": len(pool) < len(train),
        "seed": seed,
    }


def _pair_indices(n: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` distinct unordered pairs (i < j) of range(n), uniformly without replacement."""
    total = n * (n - 1) // 2
    flat = np.sort(rng.choice(total, size=n_pairs, replace=False))
    row_len = n - 1 - np.arange(n)
    ends = np.cumsum(row_len)  # pairs of rows 0..i
    i = np.searchsorted(ends, flat, side="right")
    starts = ends[i] - row_len[i]
    j = i + 1 + (flat - starts)
    return i, j


def mean_pairwise_identity(
    samples: Sequence[str],
    max_pairs: int = 2000,
    seed: int = 0,
    gap_open: int = GAP_OPEN,
    gap_extend: int = GAP_EXTEND,
) -> float:
    """Diversity: mean global-alignment identity over pairs of distinct samples (lower = more diverse).

    ``MPI = mean_{i<j} identity(s_i, s_j)`` with identity as in :func:`pairwise_identity`. If there are
    more than ``max_pairs`` pairs, the mean is over ``max_pairs`` distinct pairs drawn uniformly without
    replacement with ``numpy.random.default_rng([seed, 2])`` (an unbiased estimate).
    """
    samples = _check_seqs(samples, "samples", min_count=2)
    if max_pairs < 1:
        raise UserError(f"mean_pairwise_identity: max_pairs must be >= 1, got {max_pairs}")
    n = len(samples)
    total = n * (n - 1) // 2
    if total <= max_pairs:
        ii, jj = np.triu_indices(n, k=1)
    else:
        ii, jj = _pair_indices(n, max_pairs, _rng(seed, 2))
    aligner = _Aligner(gap_open, gap_extend)
    return float(np.mean([aligner.identity(samples[i], samples[j]) for i, j in zip(ii, jj, strict=True)]))


# ------------------------------------------------------------------------------------- profile HMM


def build_family_hmm(train_seqs: Sequence[str], n_align: int = 500, seed: int = 0) -> Any:
    """Profile HMM of the training family: pyfamsa MSA of a subsample, then pyhmmer's ``hmmbuild``.

    Up to ``n_align`` training sequences are drawn without replacement with
    ``numpy.random.default_rng([seed, 3])``, aligned with FAMSA (pyfamsa, default settings, duplicates
    kept), and turned into a Plan7 HMM by ``pyhmmer.plan7.Builder`` (HMMER defaults: fast architecture
    with symfrac 0.5, position-based weights, entropy-weighted effective sequence number, Dirichlet
    mixture priors). Returns a ``pyhmmer.plan7.HMM``.
    """
    train = _check_seqs(train_seqs, "train_seqs", min_count=2)
    if n_align < 2:
        raise UserError(f"hmm_hit_fraction: n_align must be >= 2, got {n_align}")
    pyfamsa = _require("pyfamsa")
    easel = _require("pyhmmer.easel", "pyhmmer")
    plan7 = _require("pyhmmer.plan7", "pyhmmer")
    chosen = _subsample(train, n_align, _rng(seed, 3))
    aligner = pyfamsa.Aligner(guide_tree="upgma", threads=1, keep_duplicates=True)
    msa = aligner.align([pyfamsa.Sequence(str(i).encode(), s.encode()) for i, s in enumerate(chosen)])
    text = easel.TextMSA(
        name=b"train_family",
        sequences=[easel.TextSequence(name=row.id, sequence=row.sequence.decode()) for row in msa],
    )
    alphabet = easel.Alphabet.amino()
    builder = plan7.Builder(alphabet)
    background = plan7.Background(alphabet)
    hmm, _, _ = builder.build_msa(text.digitize(alphabet), background)
    return hmm


def hmm_hits(hmm: Any, seqs: Sequence[str], evalue: float = 1e-5) -> list[bool]:
    """For each sequence, whether ``hmmsearch`` with ``hmm`` reports it at full-sequence E-value <= evalue.

    The E-value is relative to the number of sequences searched (HMMER's ``Z = len(seqs)``), so the
    same threshold is stricter for larger sets; compare sets of equal size.
    """
    seqs = _check_seqs(seqs, "seqs")
    easel = _require("pyhmmer.easel", "pyhmmer")
    plan7 = _require("pyhmmer.plan7", "pyhmmer")
    alphabet = hmm.alphabet
    block = easel.TextSequenceBlock(
        [easel.TextSequence(name=str(i).encode(), sequence=s) for i, s in enumerate(seqs)]
    ).digitize(alphabet)
    pipeline = plan7.Pipeline(alphabet, Z=len(seqs), E=evalue)
    hits = pipeline.search_hmm(hmm, block)
    found = [False] * len(seqs)
    for hit in hits:
        if hit.evalue <= evalue:
            name = hit.name if isinstance(hit.name, bytes) else hit.name.encode()
            found[int(name)] = True
    return found


def hmm_hit_fraction(
    samples: Sequence[str],
    train_seqs: Sequence[str],
    n_align: int = 500,
    evalue: float = 1e-5,
    seed: int = 0,
) -> float:
    """Fraction of samples recognised as family members by a profile HMM built from training sequences.

    ``hits / N``, where a sample is a hit when ``hmmsearch`` of the HMM from :func:`build_family_hmm`
    (``n_align`` seeded training sequences aligned with pyfamsa, built with pyhmmer) against all samples
    gives it a full-sequence E-value <= ``evalue``. The E-value is relative to the number of sequences
    searched (``Z = len(samples)``): ``E = Z * P(score >= observed | random sequence)``.
    """
    samples = _check_seqs(samples, "samples")
    hmm = build_family_hmm(train_seqs, n_align=n_align, seed=seed)
    return sum(hmm_hits(hmm, samples, evalue)) / len(samples)


# ------------------------------------------------------------------------------------------ floor


def shuffle_sequences(seqs: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Shuffle the residues inside each sequence independently (uniform permutation per sequence).

    Keeps each sequence's length and residue multiset, so composition and the length distribution are
    unchanged while order (k-mers for k > 1, alignability, family signal) is destroyed: the floor that
    a model matching only composition and length would reach.
    """
    out = []
    for s in seqs:
        chars = np.array(list(s), dtype="<U1")
        out.append("".join(rng.permutation(chars).tolist()))
    return out


# ----------------------------------------------------------------------------------------- report


def _row(
    seqs: list[str],
    reference: list[str],
    train_pool: list[str],
    hmm: Any,
    *,
    max_len: int,
    kmer_ks: Sequence[int],
    pseudocount: float,
    evalue: float,
    max_pairs: int,
    seed: int,
    per_sample: bool,
) -> dict[str, Any]:
    valid = [s for s in seqs if _is_valid(s)]
    row: dict[str, Any] = {
        "n": len(seqs),
        "n_valid": len(valid),
        "validity": validity(seqs, max_len) if seqs else None,
        "mean_length": float(np.mean([len(s) for s in valid])) if valid else None,
    }
    if not valid:
        for key in (
            "composition_kl_bits",
            "kmer_js_bits",
            "length_w1",
            "nearest_train_identity",
            "mean_pairwise_identity",
            "hmm_hit_fraction",
        ):
            row[key] = None
        return row
    row["composition_kl_bits"] = composition_kl(valid, reference, pseudocount)
    row["kmer_js_bits"] = {str(k): kmer_js(valid, reference, k) for k in kmer_ks}
    row["length_w1"] = length_distance(valid, reference)
    nn = nearest_identity(valid, train_pool, max_train=None, seed=seed)
    per = np.asarray(nn["per_sample"])
    row["nearest_train_identity"] = {
        "mean": nn["mean"],
        "median": nn["median"],
        "p90": float(np.quantile(per, 0.9)),
        "frac_ge_0.9": float(np.mean(per >= 0.9)),
    }
    if per_sample:
        row["nearest_train_identity"]["per_sample"] = nn["per_sample"]
    row["mean_pairwise_identity"] = (
        mean_pairwise_identity(valid, max_pairs=max_pairs, seed=seed) if len(valid) >= 2 else None
    )
    row["hmm_hit_fraction"] = sum(hmm_hits(hmm, valid, evalue)) / len(valid)
    return row


def _split_heldout(heldout: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """(natural row, reference): a seeded random half A of the held-out set cut to n sequences, and the
    other half B."""
    order = _rng(seed, 4).permutation(len(heldout))
    half = len(heldout) // 2
    return [heldout[i] for i in order[:half]][:n], [heldout[i] for i in order[half:]]


REPORT_NOTES = {
    "reference": "random half B of heldout; natural row = other half A cut to len(samples); "
    "shuffled row = natural row with residues shuffled within each sequence",
    "kmer_js": "Jensen-Shannon divergence in bits, k-mers within sequences, X-containing k-mers skipped",
    "length_w1": "Wasserstein-1 distance between length distributions, in residues",
    "identity": f"global alignment (parasail NW, BLOSUM62, gap open {GAP_OPEN} extend {GAP_EXTEND}); "
    "identical non-X pairs / alignment columns incl. end gaps",
    "evalue_note": "full-sequence E-value with Z = number of sequences searched in that row",
}
"""What the report's figures mean, saved beside them in its settings."""


def protein_report(
    samples: Sequence[str],
    train: Sequence[str],
    heldout: Sequence[str],
    seed: int = 0,
    *,
    max_len: int | None = None,
    max_train: int | None = 5000,
    n_align: int = 500,
    evalue: float = 1e-5,
    max_pairs: int = 2000,
    kmer_ks: Sequence[int] = (1, 2, 3),
    pseudocount: float = 1.0,
    per_sample: bool = False,
) -> dict[str, Any]:
    """All protein metrics for generated samples, with a natural row and a shuffled floor row.

    Rows (each a dict with n, n_valid, validity, mean_length, composition_kl_bits, kmer_js_bits,
    length_w1, nearest_train_identity, mean_pairwise_identity, hmm_hit_fraction):

    * ``samples``: the generated sequences.
    * ``natural``: held-out natural sequences, the level a perfect model would reach. The held-out set
      is split at random (seeded) into two disjoint halves, A and B. B is the *reference* for the
      distribution metrics (composition KL, k-mer JS, length W1) of every row, so the natural row
      compares A with B: two independent draws of the same distribution, not the trivial 0 of
      comparing a set with itself. A is cut to at most ``len(samples)`` sequences so that the natural
      row has the same size, hence the same finite-sample bias (and the same HMM E-value ``Z``), as
      the samples row. Novelty for this row is A against the training set (held-out vs train).
    * ``shuffled``: the sequences of the natural row with residues shuffled within each sequence
      (:func:`shuffle_sequences`): same composition and lengths, no order. The floor.

    Validity uses ``max_len`` (default: the longest training sequence). All other metrics are computed
    on the valid (non-empty, in-alphabet) sequences of a row, whatever their length. Novelty is against
    a seeded subsample of at most ``max_train`` training sequences, the same for every row; the HMM is
    built once from ``n_align`` seeded training sequences and searched against each row separately.
    Every number is a plain float/int/None, so the result is JSON-serialisable (no NaN).
    """
    samples_l = list(samples)
    if not samples_l:
        raise UserError("protein_report: samples is empty")
    train_l = _check_seqs(train, "train", min_count=2)
    heldout_l = _check_seqs(heldout, "heldout", min_count=2)
    if max_len is None:
        max_len = max(len(s) for s in train_l)

    natural, reference = _split_heldout(heldout_l, len(samples_l), seed)
    shuffled = shuffle_sequences(natural, _rng(seed, 5))

    train_pool = _subsample(train_l, max_train, _rng(seed, 1))
    hmm = build_family_hmm(train_l, n_align=n_align, seed=seed)

    common = dict(
        max_len=max_len,
        kmer_ks=kmer_ks,
        pseudocount=pseudocount,
        evalue=evalue,
        max_pairs=max_pairs,
        seed=seed,
        per_sample=per_sample,
    )
    rows = {"samples": samples_l, "natural": natural, "shuffled": shuffled}
    report: dict[str, Any] = {name: _row(seqs, reference, train_pool, hmm, **common) for name, seqs in rows.items()}
    report["settings"] = {
        "seed": seed,
        "max_len": max_len,
        "n_train_total": len(train_l),
        "n_train_used_for_identity": len(train_pool),
        "train_subsampled_for_identity": len(train_pool) < len(train_l),
        "n_heldout": len(heldout_l),
        "n_reference": len(reference),
        "n_natural": len(natural),
        "composition_kl": f"KL(reference || row) in bits, pseudocount {pseudocount} per amino acid, X ignored",
        "max_pairs": max_pairs,
        "n_align": n_align,
        "hmm_length": int(hmm.M),
        "evalue": evalue,
        **REPORT_NOTES,
    }
    return report
