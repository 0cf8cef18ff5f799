"""MDLM: the absorbing NELBO with a normalised parameterisation (Sahoo et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..processes import Absorbing, Process
from ..schedules import Schedule
from .base import OBJECTIVES, DiffusionObjective, log_expm1
from .estimators import ESTIMATOR_OPTIONS, estimator_refusal


@OBJECTIVES.register
class MDLM(DiffusionObjective):
    """MDLM (Sahoo et al.): the absorbing NELBO with a normalised SUBS parameterisation.

    s_y = softmax(o)_y / expm1(sbar) over real tokens (the mask logit is removed; unmasked positions
    are carried over), which turns the score entropy into
        l_i = sigma(t) / expm1(sbar) * ( -log p_theta(x0_i | x_t) )  at masked positions,
    i.e. (1/t) * cross-entropy under the log-linear schedule: the same bound, lower variance.
    """

    name = "mdlm"
    time_separable = True
    options = ESTIMATOR_OPTIONS

    def __init__(self, process: Process, schedule: Schedule, **estimator):
        if not isinstance(process, Absorbing):
            raise ValueError("mdlm is defined for the absorbing process only")
        super().__init__(process, schedule, **estimator)

    @classmethod
    def refuse(cls, config):
        if config.process != "absorbing":
            return "--objective mdlm needs --process absorbing (its SUBS parameterisation is for masking)"
        return estimator_refusal(config.objective_options, masked=True)

    def log_score(self, out, xt, sbar):
        return F.log_softmax(self.on_support(out), dim=-1) - log_expm1(sbar)

    def position_loss(self, out, xt, x0, sbar, sigma):
        masked = xt == self.process.mask_id  # only moving tokens are ever masked
        target = torch.where(masked, x0, 0)  # a context token is never a target
        nll = F.cross_entropy(self.on_support(out).transpose(1, 2), target, reduction="none")
        return torch.where(masked, sigma / torch.expm1(sbar) * nll, 0.0)
