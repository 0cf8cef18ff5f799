"""A tiny distribution with exact conditionals, used as the 'network' in the maths tests.

All length-3 sequences over 3 tokens with fixed random probabilities. Everything here is computed
by brute-force enumeration, independently of the library's closed forms.
"""

from __future__ import annotations

import itertools
import math

import torch


class ToyDistribution:
    def __init__(self, V: int = 3, L: int = 3, seed: int = 0):
        self.V, self.L = V, L
        g = torch.Generator().manual_seed(seed)
        self.seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))  # [V^L, L]
        # a Dirichlet(1, ..., 1) draw from this toy's own generator: normalised standard exponentials
        e = -torch.log(torch.rand(len(self.seqs), generator=g, dtype=torch.float64))
        self.p = e / e.sum()
        self.p = (self.p + 0.02) / (self.p + 0.02).sum()  # keep every sequence reasonably likely

    def index(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (self.V ** torch.arange(self.L - 1, -1, -1))).sum(-1)

    # --- absorbing: p(x0_i = y | unmasked part of x_t) ---------------------------------------
    def masked_conditionals(self, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
        """[B, L, V] exact posterior of each position given the unmasked positions of x_t."""
        consistent = ((xt[:, None, :] == self.seqs[None]) | (xt[:, None, :] == mask_id)).all(-1)  # [B, N]
        w = consistent * self.p[None]  # [B, N]
        onehot = torch.nn.functional.one_hot(self.seqs, self.V).double()  # [N, L, V]
        post = torch.einsum("bn,nlv->blv", w, onehot)
        return post / post.sum(-1, keepdim=True)

    # --- uniform: the exact concrete score of the noised marginal p_t --------------------------
    def noised_marginal(self, sbar: float) -> torch.Tensor:
        """p_t over all V^L sequences, by enumeration of x0 and per-token kernels."""
        keep = math.exp(-sbar)
        K = keep * torch.eye(self.V, dtype=torch.float64) + (1 - keep) / self.V  # K[a, b] = P(a | b)
        trans = K[self.seqs[:, None, :], self.seqs[None, :, :]].prod(-1)  # [N x_t, N x0]
        return trans @ self.p

    def uniform_scores(self, xt: torch.Tensor, sbar: float) -> torch.Tensor:
        pt = self.noised_marginal(sbar)
        B = xt.shape[0]
        s = torch.empty(B, self.L, self.V, dtype=torch.float64)
        base = pt[self.index(xt)]
        for i in range(self.L):
            for y in range(self.V):
                x2 = xt.clone()
                x2[:, i] = y
                s[:, i, y] = pt[self.index(x2)] / base
        return s


class ExactAbsorbingNet(torch.nn.Module):
    """Outputs the exact optimum of an absorbing objective: o_y = log(scale * p(x0_i = y | x_t))."""

    time_conditioned = False

    def __init__(self, toy: ToyDistribution, mask_id: int, scale: float):
        super().__init__()
        self.toy, self.mask_id, self.log_scale = toy, mask_id, math.log(scale)

    def forward(self, xt, sbar=None):
        return torch.log(self.toy.masked_conditionals(xt, self.mask_id)) + self.log_scale


class ExactUniformNet(torch.nn.Module):
    """Outputs the exact log concrete score of the uniform process at the given total noise."""

    time_conditioned = True

    def __init__(self, toy: ToyDistribution):
        super().__init__()
        self.toy = toy

    def forward(self, xt, sbar):
        out = torch.empty(xt.shape[0], self.toy.L, self.toy.V, dtype=torch.float64)
        for value in sbar.unique():
            rows = sbar == value
            out[rows] = torch.log(self.toy.uniform_scores(xt[rows], float(value)))
        return out


class ExactARNet(torch.nn.Module):
    """Causal 'network' whose logits are the exact log p(x_i | x_<i) of the toy distribution.
    Input: [start, x_1 .. x_{n-1}] (start id = V); output row i predicts x_{i+1}."""

    time_conditioned = False

    def __init__(self, toy: ToyDistribution):
        super().__init__()
        self.toy = toy

    def forward(self, inputs, sbar=None):
        B, n = inputs.shape
        out = torch.empty(B, n, self.toy.V, dtype=torch.float64)
        for i in range(n):
            prefix = inputs[:, 1 : i + 1]  # the tokens before position i
            match = (
                (self.toy.seqs[None, :, :i] == prefix[:, None, :]).all(-1)
                if i
                else torch.ones(B, len(self.toy.p), dtype=torch.bool)
            )
            w = match * self.toy.p[None]
            nxt = torch.nn.functional.one_hot(self.toy.seqs[:, i], self.toy.V).double()
            probs = w @ nxt
            out[:, i] = torch.log(probs / probs.sum(-1, keepdim=True))
        return out


class RecordToy:
    """Variable-length records with start/end markers, as proteins are: every string of 1..max_n letters
    over `letters`, with fixed random probabilities. Encoded by ddlm's CharTokenizer in a window of
    max_n + 2 positions: [BOS, r_1 .. r_n, EOS, PAD ...]; letters are tokens 0..R-1, then BOS, EOS, PAD."""

    def __init__(self, letters: str = "AB", max_n: int = 3, seed: int = 0):
        from ddlm.data.tokenizers import CharTokenizer

        self.tok = CharTokenizer(letters, markers=True)
        self.R, self.V, self.L, self.max_n = len(letters), self.tok.vocab_size, max_n + 2, max_n
        self.records = ["".join(r) for n in range(1, max_n + 1) for r in itertools.product(letters, repeat=n)]
        self.ids = self.tok.encode_padded(self.records, self.L)  # [N, L]
        self.lengths = torch.tensor([len(r) for r in self.records])
        g = torch.Generator().manual_seed(seed)
        e = -torch.log(torch.rand(len(self.records), generator=g, dtype=torch.float64))
        self.p = (e / e.sum() + 0.01) / (e / e.sum() + 0.01).sum()

    def p_length(self) -> torch.Tensor:
        """[max_n] p(n = 1 .. max_n)."""
        return torch.stack([self.p[self.lengths == n].sum() for n in range(1, self.max_n + 1)])

    def index(self, ids: torch.Tensor) -> torch.Tensor:
        """The record index of each row of ids (any window width >= n + 2; padding beyond ignored)."""
        width = min(ids.shape[1], self.L)
        match = (ids[:, None, :width] == self.ids[None, :, :width]).all(-1)
        return match.double().argmax(-1)

    def conditionals(self, xt: torch.Tensor, mask_id: int, blind: bool = False) -> torch.Tensor:
        """[B, L', V] p(x0_i = y | the record's length and its unmasked letters) for letters y; 0 elsewhere.
        The length is where the end marker stands. `blind`: ignore the unmasked letters (a wrong model)."""
        B, width = xt.shape
        ids = self.ids[:, :width]
        n = (xt == self.tok.eos_id).double().argmax(-1) - 1  # [B]
        same_length = self.lengths[None, :] == n[:, None]  # [B, N]
        seen = (xt[:, None, :] == ids[None]) | (xt[:, None, :] == mask_id) | (xt[:, None, :] >= self.R)
        consistent = same_length & (True if blind else seen.all(-1))
        w = consistent * self.p[None]  # [B, N]
        onehot = torch.nn.functional.one_hot(ids.clamp(max=self.V - 1), self.V).double()  # [N, L', V]
        onehot[..., self.R :] = 0.0
        post = torch.einsum("bn,nlv->blv", w, onehot)
        return post / post.sum(-1, keepdim=True).clamp(min=1e-300)


class ExactRecordNet(torch.nn.Module):
    """The exact optimum of an absorbing objective on RecordToy with support R: o_y = log(scale * p(y | ..))
    at letters y, and the exact length head log p(n)."""

    time_conditioned = False

    def __init__(self, toy: RecordToy, mask_id: int, scale: float, blind: bool = False):
        super().__init__()
        self.toy, self.mask_id, self.log_scale, self.blind = toy, mask_id, math.log(scale), blind

    def length_log_probs(self) -> torch.Tensor:
        return torch.log(self.toy.p_length())

    def forward(self, xt, sbar=None):
        return torch.log(self.toy.conditionals(xt, self.mask_id, self.blind).clamp(min=1e-300)) + self.log_scale
