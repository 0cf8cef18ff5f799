"""Sample quality for text: generative perplexity under a ddlm AR model trained on the same data.

gen-ppl = exp( sum over samples of -log p_AR(sample) / number of tokens ): lower means the samples
look more like the training text to the AR judge. No external model is needed at run time. Beside it,
the unigram entropy of each sample's own tokens: repetitive, degenerate text can reach a low gen-ppl,
but not with the data's entropy.
"""

from __future__ import annotations

import math

import torch


@torch.inference_mode()
def generative_perplexity(ar_net, ar_objective, ids: torch.Tensor, batch_size: int = 32) -> float:
    total = 0.0
    for start in range(0, len(ids), batch_size):
        total += ar_objective.loss(ar_net, ids[start : start + batch_size]).double().sum().item()
    return math.exp(total / ids.numel())


def unigram_entropy(ids: torch.Tensor) -> float:
    """Mean over samples of H(sample) = -sum_v f_v log2 f_v, f_v the frequency of token v in the sample."""
    total = 0.0
    for row in ids:
        p = torch.bincount(row).double()
        p = p[p > 0] / len(row)
        total += float(-(p * p.log2()).sum())
    return total / len(ids)
