"""Self-distillation through time (SDTT, Deschenaux & Gulcehre 2025): a student that samples in half
the steps of its teacher, halved again round after round.

The sampler of K steps walks the grid t_0 = 1 > t_1 > ... > t_K = 0 (`sampling.reverse_times`);
in step t -> s a masked position unmasks with probability min(1, w(t, s) sum_y s_y(t)) (the step
rule's `unmask_weight`; 1 in the last step, to t = 0) and becomes y with probability proportional to
the score s_y(t). A student of
K / 2 steps takes the teacher's steps 2j and 2j + 1 as its one step j. Its target at x_t, a draw of the
forward process at t = t_2j, is built from the teacher's two steps:

    x_mid = the teacher's step t_2j -> t_2j+1 from x_t, drawing from p_T(. | x_t);
    target_i = p_T(. | x_t)_i    where that step unmasked position i,
               p_T(. | x_mid)_i  at the positions still masked (the second call, which reads the first
                                 step's draws),

with p_T(. | x)_i the teacher's scores at i normalised over the tokens. The student minimises
sum_i KL(target_i || p_S(. | x_t)_i) over the masked positions of x_t; the minimiser is E[target_i],
the mixture the teacher's two steps give position i, which is as close as a sampler that draws the
positions of one step independently can come to them. It learns which token a position becomes, not
when it unmasks (the schedule's rate, unchanged), nor the length head (the teacher's p(n) is kept).

Progressive halving: K0 -> K0 / 2 -> ... -> N, the student of each round the teacher of the next
(its EMA weights), each round `train_steps` optimiser steps of the ordinary `Trainer`.
"""

from __future__ import annotations

import copy

import torch

from .objectives import Objective
from .sampling import StepRule, TauLeaping, draw, reverse_times
from .train import Trainer


def normalised_scores(
    objective: Objective, net, xt: torch.Tensor, sbar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s [B, L, V], log of s normalised over the tokens) of the network at x_t, total noise sbar [B]."""
    log_s = objective.log_score(objective.network(net, xt, sbar, False), xt, sbar[:, None, None])
    return log_s.exp(), torch.log_softmax(log_s, dim=-1)


def categorical_kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats over the last axis, p a distribution and log_q a log-distribution: a token
    off the support has p = 0 and log q = -inf, and adds 0, not nan."""
    return (p * (p.clamp(min=1e-30).log() - log_q.clamp(min=-1e4))).sum(-1)


def two_step_target(
    objective: Objective, teacher, xt: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor, rule: StepRule, generator
) -> torch.Tensor:
    """[B, L, V] the student's target at the masked positions of x_t (module docstring): the teacher's
    step t -> t_mid drawn, then its prediction at the result. t and t_mid are [B] (float64)."""
    schedule, mask_id = objective.schedule, objective.process.mask_id
    sbar, sbar_mid = schedule.total(t).float(), schedule.total(t_mid).float()
    s, first = normalised_scores(objective, teacher, xt, sbar)
    masked = xt == mask_id
    p_unmask = (rule.unmask_weight(schedule, t, t_mid).float()[:, None] * s.sum(-1)).clamp(max=1.0)
    u = torch.rand(xt.shape, generator=generator, device=xt.device)
    unmasked = masked & (u < p_unmask)
    x_mid = torch.where(unmasked, draw(s, generator), xt)
    _, second = normalised_scores(objective, teacher, x_mid, sbar_mid)
    return torch.where(unmasked[..., None], first, second).exp()


class SelfDistillation:
    """What the `Trainer` optimises while distilling a student of `teacher_steps // 2` steps: the KL of
    the student's prediction from the two-step target, in nats per sequence. Held-out evaluation and
    batching are the underlying objective's, so a distilled run's bound is reported as any run's."""

    def __init__(self, objective: Objective, teacher, teacher_steps: int, rule: StepRule | None = None):
        if teacher_steps < 2 or teacher_steps % 2:
            raise ValueError(f"a student halves its teacher's steps: {teacher_steps} is not even")
        self.objective, self.teacher, self.teacher_steps = objective, teacher, teacher_steps
        self.rule = rule or TauLeaping()
        self.times = torch.tensor(reverse_times(objective.schedule, teacher_steps), dtype=torch.float64)

    def training_loss(self, net, x0: torch.Tensor, generator=None) -> torch.Tensor:
        device = x0.device
        j = torch.randint(0, self.teacher_steps // 2, (x0.shape[0],), generator=generator, device=device)
        times = self.times.to(device)
        t, t_mid = times[2 * j], times[2 * j + 1]
        sbar = self.objective.schedule.total(t).float()
        xt = self.objective.process.perturb(x0, sbar[:, None], generator)
        with torch.no_grad():
            target = two_step_target(self.objective, self.teacher, xt, t, t_mid, self.rule, generator)
        _, log_student = normalised_scores(self.objective, net, xt, sbar)
        kl = categorical_kl(target, log_student)
        return torch.where(xt == self.objective.process.mask_id, kl, 0.0).sum(-1)

    def length_nll(self, net, x0: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x0.shape[0], device=x0.device)  # the length head stays the teacher's

    def adapt(self, net, x0: torch.Tensor, generator=None) -> None:
        return None  # nothing to fit between evaluations: the target is the teacher's

    def training_state(self) -> dict:
        return {}

    def load_training_state(self, state: dict) -> None:
        pass

    @property
    def length_multiple(self) -> int:
        return self.objective.length_multiple

    def for_evaluation(self) -> Objective:
        return self.objective.for_evaluation()


def halving_rounds(teacher_steps: int, steps: int) -> list[int]:
    """The teacher's step count of each round from `teacher_steps` down to a student of `steps`; ValueError
    unless teacher_steps = steps * 2^r with r >= 1."""
    rounds, k = [], teacher_steps
    while k > steps and k % 2 == 0:
        rounds.append(k)
        k //= 2
    if k != steps or not rounds:
        raise ValueError(f"{teacher_steps} steps do not halve to {steps}")
    return rounds


def progressive_halving(
    trainer: Trainer,
    objective: Objective,
    rounds: list[int],
    train_steps: int | None,
    seconds_per_round: float | None,
    progress: bool,
    on_round=None,
) -> list[dict]:
    """Run the halving rounds on `trainer` (whose network starts as the teacher's copy): round r trains a
    student of rounds[r] // 2 steps for `train_steps` steps (or `seconds_per_round`) against the EMA
    weights the round before left (the teacher's for the first). `on_round(record)` after each round."""
    teacher = copy.deepcopy(trainer.ema_net).eval()
    records = []
    for teacher_steps in rounds:
        trainer.objective = SelfDistillation(objective, teacher, teacher_steps)
        trainer.horizon = None  # a --time-budget round measures its own horizon (a --steps one sets it)
        start = trainer.step
        trainer.fit(None if train_steps is None else start + train_steps, seconds_per_round, progress)
        teacher = copy.deepcopy(trainer.ema_net).eval()
        record = {
            "teacher_steps": teacher_steps,
            "student_steps": teacher_steps // 2,
            "train_steps": trainer.step - start,
        }
        records.append(record)
        trainer.log({"step": trainer.step, "event": "distillation round done", **record})
        if on_round is not None:
            on_round(record)
    return records
