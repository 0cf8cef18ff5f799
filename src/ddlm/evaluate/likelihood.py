"""Held-out likelihood in bits per token: the NELBO for diffusion objectives, the exact NLL for AR.

The whole sequence's bound (padding included) is divided by the number of real tokens, so the
figure is directly comparable with an AR model's exact NLL over the same tokens. Sums are
accumulated in float64.

For the absorbing process the bound is evaluated under the log-linear schedule with eps = 0: the
masking probability then runs over all of (0, 1), so no prior or reconstruction term is left out.
With a time-independent network this is the same bound the model was trained on (the absorbing
NELBO does not depend on the schedule, MDLM). Each sequence gets K stratified time samples, and the
Monte-Carlo standard error is estimated from their spread (conservative: stratification lowers
the true variance).
"""

from __future__ import annotations

import copy
import math

import torch

from ..objectives import DiffusionObjective, Objective
from ..processes import Absorbing
from ..schedules import LogLinear


def bound_objective(objective: Objective) -> Objective:
    """The objective with the schedule that makes its estimate an exact NELBO (see module docstring)."""
    continuous = isinstance(objective, DiffusionObjective) and objective.continuous_time
    if continuous and isinstance(objective.process, Absorbing):
        bound = copy.copy(objective)  # a copy keeps the objective's own options (e.g. bd3lm's block size)
        bound.schedule = LogLinear(eps=0.0)
        return bound
    return objective


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
) -> dict:
    objective = bound_objective(objective)
    exact = objective.bound == "exact"
    count_form = (
        not exact
        and objective.continuous_time
        and isinstance(objective.process, Absorbing)
        and not getattr(net, "time_conditioned", True)
    )
    K = 1 if exact else max(time_samples, 1)
    gen = torch.Generator(device).manual_seed(seed)
    total = torch.zeros((), dtype=torch.float64)
    variance = torch.zeros((), dtype=torch.float64)
    rows_per_batch = max(1, batch_size // K)
    device_type = torch.device(device).type
    for start in range(0, len(ids), rows_per_batch):
        x0 = ids[start : start + rows_per_batch].to(device)
        b = len(x0)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            if exact:
                losses = objective.loss(net, x0).double()[:, None]
            else:
                u = torch.rand(b, K, generator=gen, device=device, dtype=torch.float64)
                strata = ((torch.arange(K, device=device) + u) / K).flatten()  # stratified in (0, 1)
                xs = x0.repeat_interleave(K, 0)
                if count_form:
                    k = (strata * x0.shape[1]).floor().long() + 1  # stratified over {1..L}
                    losses = objective.loss_at_mask_count(net, xs, k, generator=gen)
                else:
                    losses = objective.loss(net, xs, t=strata.float(), generator=gen)
                losses = losses.double().view(b, K)
        losses = losses.cpu()
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
    if not exact:
        result["time_samples"] = K
        result["mc_standard_error"] = (variance.sqrt() / scale).item()
    return result
