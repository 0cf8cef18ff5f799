"""The exact likelihood of a masked diffusion model as it samples with a deterministic unmasking order.

A sampler that at each of S steps ranks the masked positions by a deterministic score of the model's
prediction (`--order top-prob`, `top-margin` or `confidence`, no noise), commits the k best (k as
ordering.py decides) and draws each committed token from the model's prediction there defines a
distribution over sequences whose likelihood is exact (DUEL: "Exact Likelihood for Masked Diffusion
via Deterministic Unmasking"). For a given x the sampler's path is fixed, because the ranking depends
only on the tokens of x revealed so far, so

    log p(x) = sum_i sum_{j committed at step i} log p_theta(x_j | the tokens revealed before step i)

With one position per step and the exact conditionals this is log p_data(x) (the chain rule in the
order the policy picks). A length-aware model adds log p(n), as in the bound. S network calls per
sequence, the cost of sampling it.
"""

from __future__ import annotations

import math

import torch

from ..batches import trim_padding
from ..device import autocast
from ..errors import UserError
from ..networks import Labelled
from ..ordering import OrderPolicy, commit_top
from ..processes import Absorbing
from ..sampling import CachedScores, SampleSpec, masked_fraction, reverse_times


def check_policy(objective, order: OrderPolicy) -> None:
    """The exact likelihood needs the absorbing process and a deterministic, commit-for-good order."""
    if not isinstance(objective.process, Absorbing):
        raise UserError("--likelihood exact: needs a masked (absorbing) diffusion model; AR's NLL is already exact")
    if order.noise > 0 or order.remask or order.name == "random":
        raise UserError(f"--likelihood exact: --order {order.name} must be deterministic (no noise, no remasking)")


@torch.inference_mode()
def ordered_log_likelihood(net, objective, x0: torch.Tensor, order: OrderPolicy, steps: int) -> torch.Tensor:
    """[B] log p(x0) in nats under the sampler that unmasks in `order` over `steps` steps (float64);
    the positions the process does not move (markers, padding) are held as in sampling."""
    mask_id = objective.process.mask_id
    free = objective.process.moves(x0)
    x = torch.where(free, mask_id, x0)
    cache = not getattr(net, "time_conditioned", False)
    scores = CachedScores(net, objective, x.shape, SampleSpec(steps=steps, order=order), cache, x0.device)
    times = reverse_times(objective.schedule, steps)
    total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    for i in range(steps):
        active = (x == mask_id).any(-1)
        if not active.any():
            break
        s = scores(x, times[i], active)
        probs = s / s.sum(-1, keepdim=True).clamp(min=1e-30)
        keep = order.keep_masked(probs, x == mask_id, free, masked_fraction(objective.schedule, times[i + 1]))
        new, _ = commit_top(x, x0, order.score(probs, None), free, mask_id, keep)
        committed = (new != x) & active[:, None]
        log_p = torch.log(probs.gather(-1, x0.clamp(max=probs.shape[-1] - 1)[..., None]).squeeze(-1).double())
        total += torch.where(committed, log_p, 0.0).sum(-1)
        scores.forget(committed.any(-1))
        x = torch.where(active[:, None], new, x)
    return total


@torch.inference_mode()
def evaluate_exact(
    net,
    objective,
    ids: torch.Tensor,
    real_tokens: torch.Tensor,
    order: OrderPolicy,
    steps: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress=None,
    labels: torch.Tensor | None = None,
) -> dict:
    """Bits per real token of `ids` under the exact likelihood of the ordered sampler (see above)."""
    check_policy(objective, order)
    pad_id = getattr(getattr(net, "cfg", None), "pad_id", None)
    total = 0.0
    for start in range(0, len(ids), batch_size):
        x0 = ids[start : start + batch_size].to(device)
        if pad_id is not None:
            x0 = trim_padding(x0, pad_id, objective.length_multiple)
        given = net if labels is None else Labelled(net, labels[start : start + len(x0)].to(device))
        with autocast(device, autocast_dtype):
            nll = -ordered_log_likelihood(given, objective, x0, order, steps) + objective.length_nll(net, x0).double()
        total += float(nll.sum())
        if progress is not None:
            progress.update(len(x0))
    tokens = int(real_tokens.sum())
    return {
        "bits_per_token": total / (math.log(2) * tokens),
        "tokens": tokens,
        "sequences": len(ids),
        "bound": "exact",
        "likelihood": f"exact: the sampler with --order {order.name}, {steps} steps",
    }
