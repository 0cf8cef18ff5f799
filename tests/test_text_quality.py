"""Text sample quality: generative perplexity under an AR judge and the samples' unigram entropy, against
hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from ddlm.evaluate.text_quality import generative_perplexity, unigram_entropy
from ddlm.objectives.ar import AutoRegressive
from ddlm.processes import Absorbing


class BigramJudge(torch.nn.Module):
    """An AR 'network' whose next-token logits depend only on the previous token (a bigram table)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits  # [V + 1 (the start token), V]

    def forward(self, x):
        return self.logits[x]


def test_unigram_entropy_is_each_samples_own_token_entropy_averaged():
    ids = torch.tensor([[0, 0, 1, 1], [0, 1, 2, 3], [5, 5, 5, 5]])
    assert unigram_entropy(ids) == pytest.approx((1.0 + 2.0 + 0.0) / 3)
    assert unigram_entropy(torch.tensor([[0, 0, 0, 1]])) == pytest.approx(
        -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    )


def test_generative_perplexity_is_exp_of_the_judges_mean_nll_per_token():
    V = 3
    torch.manual_seed(0)
    table = torch.randn(V + 1, V)
    judge, objective = BigramJudge(table), AutoRegressive(Absorbing(V), None)
    ids = torch.randint(0, V, (5, 7))
    log_p = table.log_softmax(-1)
    nll = 0.0
    for row in ids.tolist():
        previous = V  # the start token
        for token in row:
            nll -= log_p[previous, token].item()
            previous = token
    expected = math.exp(nll / ids.numel())
    assert generative_perplexity(judge, objective, ids, batch_size=2) == pytest.approx(expected, rel=1e-5)
    uniform = BigramJudge(torch.zeros(V + 1, V))
    assert generative_perplexity(uniform, objective, ids) == pytest.approx(V)  # a judge that knows nothing
