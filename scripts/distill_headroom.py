"""How much one self-distillation round can teach: the student's loss at the start of a round, split
into the part no student can remove and the part the round can gain (its headroom).

    python scripts/distill_headroom.py TEACHER_RUN --teacher-steps 32 [--student STUDENT_RUN]
        [--records 64] [--draws 16] [--seed 0] [--json]

The round K -> K / 2 trains the student p_S to minimise sum_i KL(T_i || p_S,i) over the masked
positions i of x_t, where T is the teacher's two-step target (src/ddlm/distill.py), a random
quantity through the teacher's first step. With m_i = E[T_i | x_t],

    E KL(T_i || p_i) = E KL(T_i || m_i) + KL(m_i || p_i)        for any p,

so the loss at the start of a round (p = the teacher's own one-call prediction p_T) is an
irreducible part plus KL(m || p_T), the most that fitting the target can remove. With --student,
KL(m || p_S) says how much of that headroom the student took (less than KL(m || p_T): it learned;
more: the round moved it away from the target). m is the mean of --draws targets per x_t (the
teacher's first step drawn anew each time), which biases KL(m || .) up by about
(variance of T) / draws; x_t are the held-out records noised at a step 2j of the teacher's grid, j
uniform, as in training. All figures in bits per masked position.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ddlm.batches import trim_padding
from ddlm.distill import SelfDistillation, categorical_kl, normalised_scores, two_step_target
from ddlm.domains import domain_from_config
from ddlm.run import load_run
from ddlm.sampling import TauLeaping


def kl_bits(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return categorical_kl(p, log_q) / math.log(2)


def headroom(
    objective, teacher, student, teacher_steps: int, records: torch.Tensor, draws: int, seed: int, pad_id=None
) -> dict:
    """The module docstring's parts, in bits per masked position, for the round teacher_steps -> / 2 of
    the networks `teacher` and `student` (or None) on `records` [N, L] (padding `pad_id` trimmed)."""
    round_ = SelfDistillation(objective, teacher, teacher_steps)
    gen = torch.Generator().manual_seed(seed)
    sums = {"start": 0.0, "irreducible": 0.0, "headroom": 0.0, "student_gap": 0.0}
    positions = 0
    for chunk in records.split(8):
        x0 = chunk if pad_id is None else trim_padding(chunk, pad_id)
        j = torch.randint(0, teacher_steps // 2, (len(x0),), generator=gen)
        t, t_mid = round_.times[2 * j], round_.times[2 * j + 1]
        sbar = objective.schedule.total(t).float()
        xt = objective.process.perturb(x0, sbar[:, None], gen)
        masked = xt == objective.process.mask_id
        with torch.inference_mode():
            rep = lambda v: v.repeat_interleave(draws, 0)  # noqa: E731
            target = two_step_target(objective, teacher, rep(xt), rep(t), rep(t_mid), TauLeaping(), gen)
            target = target.view(len(xt), draws, *xt.shape[1:], -1).double()
            mean = target.mean(1)
            _, log_teacher = normalised_scores(objective, teacher, xt, sbar)
            parts = {
                "start": kl_bits(target, log_teacher.double()[:, None]).mean(1),
                "irreducible": kl_bits(target, mean.log()[:, None]).mean(1),
                "headroom": kl_bits(mean, log_teacher.double()),
            }
            if student is not None:
                _, log_student = normalised_scores(objective, student, xt, sbar)
                parts["student_gap"] = kl_bits(mean, log_student.double())
        for name, value in parts.items():
            sums[name] += float(value[masked].sum())
        positions += int(masked.sum())
    result = {name: value / positions for name, value in sums.items() if student is not None or name != "student_gap"}
    return {"teacher_steps": teacher_steps, "masked_positions": positions, "draws": draws, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="the round's teacher run")
    parser.add_argument("--teacher-steps", type=int, required=True, help="K: the round distils K steps into K / 2")
    parser.add_argument("--student", help="a student of this round, to see how much headroom it took")
    parser.add_argument("--records", type=int, default=64, help="held-out records, one x_t each")
    parser.add_argument("--draws", type=int, default=16, help="targets drawn per x_t for their mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_run(args.teacher)
    student = load_run(args.student) if args.student else None
    _, heldout, _ = domain_from_config(teacher.config.data, Path(args.teacher)).reload()
    pick = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(args.seed))[: args.records]
    result = headroom(
        teacher.objective, teacher.net, student and student.net, args.teacher_steps, heldout[pick], args.draws,
        args.seed, teacher.net.cfg.pad_id,
    )  # fmt: skip
    result = {"teacher": args.teacher, "student": args.student, **result}
    if args.json:
        print(json.dumps(result))
        return
    k, n = args.teacher_steps, result["masked_positions"]
    print(f"{args.teacher}, round {k} -> {k // 2} steps, {n} masked positions, {args.draws} draws each; "
          "bits per masked position:")  # fmt: skip
    print(f"  loss at the start {result['start']:.4f} = irreducible {result['irreducible']:.4f} "
          f"+ headroom KL(m || teacher) {result['headroom']:.4f}")  # fmt: skip
    if student is not None:
        print(f"  KL(m || student {args.student}) {result['student_gap']:.4f}")


if __name__ == "__main__":
    main()
