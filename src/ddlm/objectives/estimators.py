"""How training estimates the bound of a masked diffusion: the options `ddlm train` offers for it.

The bound is an expectation over the noise level; training follows a one-sample estimate of it per
sequence, and how that sample is drawn and weighted decides how much each step teaches:

* form: `time` draws t ~ U[0, 1] and masks each position with probability t (weight 1/t, unbounded
  near t = 0); `count` draws k ~ U{1..n} and masks k of the n positions (weight n / k, bounded by n).
  Both have the bound as expectation (int_0^1 (1/t) Binomial(k; n, t) dt = 1/k).
* draws: the batch's uniform numbers u (t or k come from them) are `iid`, `stratified` (one in each
  of B equal strata of [0, 1), in a random order) or `antithetic` (pairs u, 1 - u): the same marginal,
  lower variance of the batch mean.
* count sampling: `importance` draws k from q(k) proportional to k^(-1/2), which visits the few-mask
  end (whose terms vary most) more often, and multiplies by p(k) / q(k) = (1/n) / q(k): unbiased.
* weight gamma: a masked position at masked fraction r = k/n weighs (2 - gamma) r^(-gamma) instead of
  the bound's 1/r (gamma = 1); gamma = 0 is plain cross-entropy on the masked positions. The factor
  2 - gamma keeps the average weight of the bound's. gamma < 1 is not the bound: evaluation always
  reports the bound itself.

Defaults (`settle_estimator_options`), chosen by the equal-wall-clock ablation in the README: the
count form with gamma = 0.5 for a masked process (ACYP, 10 minutes, one thread: MDLM 2.698 bits per
residue against 2.890 with the time form and the bound's weights), the time form otherwise.
"""

from __future__ import annotations

import torch

from .option import Option

COUNT_FORM_WEIGHT = 0.5  # the default gamma of the count form

NOISE_DRAWS = Option(
    "noise_draws",
    "--noise-draws",
    str,
    "stratified",
    "how a batch draws its noise levels: iid, stratified, or antithetic pairs (u, 1 - u)",
    choices=("iid", "stratified", "antithetic"),
)
TRAIN_FORM = Option(
    "train_form",
    "--train-form",
    str,
    None,
    "the bound's estimator training follows: time (t ~ U, weight 1/t) or count (k of n masked, weight n/k)",
    choices=("time", "count"),
    default_help="count for the absorbing process, time otherwise",
)
COUNT_SAMPLING = Option(
    "count_sampling",
    "--count-sampling",
    str,
    "uniform",
    "count form: k ~ U{1..n}, or importance (q(k) ~ k^-1/2, reweighted: unbiased)",
    choices=("uniform", "importance"),
)
LOSS_WEIGHT = Option(
    "loss_weight",
    "--loss-weight",
    float,
    None,
    "count form: gamma, a masked position weighs (2 - gamma) (n/k)^gamma: 1 the bound, 0 plain cross-entropy",
    0.0,
    1.0,
    metavar="GAMMA",
    default_help=f"{COUNT_FORM_WEIGHT} with the count form",
)
SELF_CONDITIONING = Option(
    "self_conditioning",
    "--self-conditioning",
    bool,
    False,
    "the network also reads its own estimate of x0, from a first pass on half the training batches",
)
ESTIMATOR_OPTIONS = (TRAIN_FORM, NOISE_DRAWS, COUNT_SAMPLING, LOSS_WEIGHT, SELF_CONDITIONING)


def settle_estimator_options(options: dict, masked: bool) -> dict:
    """The options with the form and weight the user left open (None) chosen: the count form with
    gamma = COUNT_FORM_WEIGHT for a masked process, the time form (which only the bound's weights fit)
    otherwise."""
    form = options.get(TRAIN_FORM.keyword) or ("count" if masked else "time")
    weight = options.get(LOSS_WEIGHT.keyword)
    if weight is None:
        weight = COUNT_FORM_WEIGHT if form == "count" else 1.0
    return {**options, TRAIN_FORM.keyword: form, LOSS_WEIGHT.keyword: weight}


def estimator_refusal(options: dict, masked: bool) -> str | None:
    """Why these (settled) estimator options make no sense together (or for a process that does not
    mask), or None."""
    form = options.get(TRAIN_FORM.keyword, "time")  # runs older than the option trained the time form
    count_only = [LOSS_WEIGHT.flag] if options.get(LOSS_WEIGHT.keyword, 1.0) != 1.0 else []
    if options.get(COUNT_SAMPLING.keyword, COUNT_SAMPLING.default) != COUNT_SAMPLING.default:
        count_only.insert(0, COUNT_SAMPLING.flag)
    if count_only and form != "count":
        verb = "apply" if len(count_only) > 1 else "applies"
        return f"{' and '.join(count_only)} {verb} to --train-form count"
    if form == "count" and not masked:
        return "--train-form count needs --process absorbing (it counts masked positions)"
    return None


def unit_draws(n: int, mode: str, generator, device) -> torch.Tensor:
    """[n] uniform numbers in [0, 1) (float64): iid, stratified (row i in stratum i; the rows are in random
    order already) or antithetic."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if mode == "stratified":
        return (torch.arange(n, device=device, dtype=torch.float64) + u) / n
    if mode == "antithetic":
        half = u[: (n + 1) // 2]
        return torch.cat([half, 1 - half])[:n].clamp(max=1 - 1e-12)
    return u


def mask_counts(u: torch.Tensor, n: torch.Tensor, sampling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, p(k) / q(k)) per row: k in 1..n from u by the inverse CDF of q (uniform, or k^-1/2)."""
    if sampling == "uniform":
        return (u * n).floor().long() + 1, torch.ones_like(u)
    top = int(n.max())
    ks = torch.arange(1, top + 1, device=u.device, dtype=torch.float64)
    q = ks.rsqrt()[None, :] * (ks[None, :] <= n[:, None])  # [B, top], zero beyond each row's n
    cdf = q.cumsum(-1) / q.sum(-1, keepdim=True)
    k = (cdf < u[:, None]).sum(-1) + 1
    chosen = q.gather(-1, (k - 1)[:, None]).squeeze(-1) / q.sum(-1)
    return k, (1.0 / n) / chosen


def position_weight(k: torch.Tensor, n: torch.Tensor, gamma: float) -> torch.Tensor:
    """The training weight of each masked position: (2 - gamma) (n / k)^gamma (the bound's n/k at gamma = 1)."""
    ratio = n.double() / k.double()
    return ratio if gamma == 1.0 else (2 - gamma) * ratio**gamma
