"""Held-out likelihood in bits per token: the NELBO for diffusion objectives, the exact NLL for AR.

The whole sequence's bound is divided by the number of real tokens (residues + end marker for a
protein), so the figure is directly comparable with an AR model's exact NLL over the same tokens. A
fixed-window model's bound covers its padding too; a length-aware model's bound is
-log p(n) + NELBO(residues | n), its length head's term and the residues' bound. Sums are
accumulated in float64.

For the absorbing process the bound is evaluated under the log-linear schedule with eps = 0: the
masking probability then runs over all of (0, 1), so no prior or reconstruction term is left out.
With a time-independent network this is the same bound the model was trained on (the absorbing
NELBO does not depend on the schedule, MDLM). Each sequence gets K stratified time samples, and the
Monte-Carlo standard error is estimated from their spread (conservative: stratification lowers
the true variance).
"""

from __future__ import annotations

import math

import torch

from ..batches import trim_padding
from ..device import autocast
from ..networks import Labelled
from ..objectives import Objective


@torch.inference_mode()
def evaluate_bound(
    net,
    objective: Objective,
    ids: torch.Tensor,
    real_tokens: torch.Tensor,
    time_samples: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress=None,
    labels: torch.Tensor | None = None,
) -> dict:
    """Bits per real token of `ids` under the objective's bound (`objective.for_evaluation().bound_at`,
    plus -log p(n) when the network models a record's length), with K = time_samples stratified draws
    per sequence (one for an exact bound). With `labels` ([n], a labelled run's label indices) each
    record's bound is given its label: -log p(x | y) <= the same bound with the network given y."""
    objective = objective.for_evaluation()
    pad_id = getattr(getattr(net, "cfg", None), "pad_id", None)
    if pad_id is not None:  # padding is never seen: batch records of similar length and trim the rest
        order = (ids != pad_id).sum(-1).argsort(stable=True)
        ids, labels = ids[order], None if labels is None else labels[order]
    exact = objective.bound == "exact"
    K = 1 if exact else max(time_samples, 1)
    gen = torch.Generator(device).manual_seed(seed)
    total = torch.zeros((), dtype=torch.float64)
    variance = torch.zeros((), dtype=torch.float64)
    rows_per_batch = max(1, batch_size // K)
    for start in range(0, len(ids), rows_per_batch):
        x0 = ids[start : start + rows_per_batch].to(device)
        if pad_id is not None:
            x0 = trim_padding(x0, pad_id, objective.length_multiple)
        b = len(x0)
        given = net if labels is None else Labelled(net, labels[start : start + b].to(device).repeat_interleave(K))
        u = torch.rand(b, K, generator=gen, device=device, dtype=torch.float64)
        strata = ((torch.arange(K, device=device) + u) / K).flatten()  # stratified in (0, 1)
        with autocast(device, autocast_dtype):
            xs = x0.repeat_interleave(K, 0)
            losses = objective.bound_at(given, xs, strata, generator=gen) + objective.length_nll(net, xs)
        losses = losses.double().view(b, K).cpu()
        total += losses.mean(1).sum()
        if K > 1:
            variance += (losses.var(1) / K).sum()
        if progress is not None:
            progress.update(b)
    tokens = int(real_tokens.sum())
    scale = math.log(2) * tokens
    result = {
        "bits_per_token": (total / scale).item(),
        "tokens": tokens,
        "sequences": len(ids),
        "bound": objective.bound,
    }
    if labels is not None:
        result["given"] = "label"  # the bound on -log p(x | y), each record given its own label
    if not exact:
        result["time_samples"] = K
        if K > 1:  # one draw per sequence cannot tell the Monte-Carlo error from the spread of sequences
            result["mc_standard_error"] = (variance.sqrt() / scale).item()
    return result
