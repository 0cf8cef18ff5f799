"""Sample quality for text: generative perplexity under a ddlm AR model trained on the same data.

gen-ppl = exp( sum over samples of -log p_AR(sample) / number of tokens ): lower means the samples
look more like the training text to the AR judge. No external model is needed at run time.
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
