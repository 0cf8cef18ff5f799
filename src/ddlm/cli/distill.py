"""`ddlm distill`: a teacher run -> a student run directory -> halving rounds -> the summary.

The student is an ordinary run directory (the teacher's configuration, split and data, its own
checkpoints and metrics), so every command takes it; `config.json` adds its `lineage`, and
`ddlm sample STUDENT` samples in the student's steps unless told otherwise.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from ..config import RunConfig
from ..device import pick_device
from ..distill import halving_rounds, progressive_halving
from ..domains import domain_from_config
from ..errors import UserError
from ..evaluate.likelihood import evaluate_bound
from ..networks import Transformer
from ..run import LoadedRun, load_run
from ..rundir import CONFIG, LOCK, SPLIT_FILES, RunLock
from ..train import StopTraining, Trainer
from .args import SEED, add_runtime_arguments, log, number, positive_int

# the quality a student is measured against: the teacher sampled in many steps
DEFAULT_TEACHER_STEPS = 1024


def cmd_distill(args) -> int:
    with ExitStack() as held:
        return distill_into(args, held)


def distill_into(args, held: ExitStack) -> int:
    """The command's work, with the student's run directory locked (into `held`) from its creation on."""
    teacher = load_run(args.run, device=pick_device(args.device))
    rounds = plan_rounds(args, teacher)
    student_dir = create_student(args, teacher, rounds, held)
    try:
        trainer, domain, heldout = build_student_trainer(student_dir, teacher, args)
    except UserError:
        discard_student(student_dir)  # nothing trained yet: --out is free for the next try
        raise
    log(
        f"distilling {args.run} ({rounds[0]} steps) into {student_dir} ({args.steps} steps): "
        f"{len(rounds)} halving round(s), {describe_budget(args)}"
    )
    seconds = None if args.time_budget is None else args.time_budget * 60 / len(rounds)
    train_steps = None if seconds is not None else args.train_steps
    try:
        records = progressive_halving(
            trainer,
            teacher.objective,
            rounds,
            train_steps,
            seconds,
            not args.quiet,
            on_round=lineage_writer(student_dir),
        )
    except StopTraining as stop:
        log(f"ddlm: {stop}; {student_dir}/{CONFIG} says how many steps the student reached")
        return stop.exit_code
    final = evaluate_bound(
        trainer.ema_net, teacher.objective, heldout, domain.tokenizer().real_tokens(heldout),
        time_samples=args.eval_time_samples, device=trainer.device, autocast_dtype=trainer.amp,
    )  # fmt: skip
    result = {
        "run": str(student_dir),
        "teacher": str(args.run),
        "steps": args.steps,
        "rounds": records,
        "heldout": final,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"student: {student_dir} samples in {args.steps} steps (`ddlm sample {student_dir}`)")
        print(f"held-out bound: {final['bits_per_token']:.4f} bits/token (the student's NELBO)")
    return 0


def plan_rounds(args, teacher: LoadedRun) -> list[int]:
    """The teacher step count of each halving round, or a UserError naming the flag."""
    refusal = teacher.objective.distill_refusal()
    if refusal is not None:
        raise UserError(f"{args.run}: {refusal}")
    lineage = teacher.config.lineage
    teacher_steps = args.teacher_steps or (lineage["steps"] if lineage else DEFAULT_TEACHER_STEPS)
    if args.steps >= teacher_steps:
        raise UserError(f"--steps {args.steps}: a student takes fewer steps than its teacher's {teacher_steps}")
    try:
        return halving_rounds(teacher_steps, args.steps)
    except ValueError:
        raise UserError(
            f"--steps {args.steps}: the teacher's {teacher_steps} steps halve to {teacher_steps // 2}, "
            f"{teacher_steps // 4}, ...; give one of them (or --teacher-steps {args.steps} x 2^r)"
        ) from None


def create_student(args, teacher: LoadedRun, rounds: list[int], held: ExitStack) -> Path:
    """The student's run directory, locked: the teacher's configuration with its lineage, split and tokenizer."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(RunLock(out))
    if (out / CONFIG).exists():
        raise UserError(f"--out {out}: a run is already there; choose another --out")
    for name in SPLIT_FILES:
        if (Path(args.run) / name).is_file():
            shutil.copy2(Path(args.run) / name, out / name)
    overrides = {k: v for k in ("lr", "batch_size", "warmup") if (v := getattr(args, k)) is not None}
    train = replace(teacher.config.train, seed=args.seed, precision=args.precision, **overrides)
    lineage = {
        "method": "sdtt",
        "teacher": str(Path(args.run).resolve()),
        "teacher_steps": rounds[0],
        "target_steps": args.steps,
        "steps": rounds[0],  # what the student reaches so far: each round halves it
        "rounds_done": 0,
    }
    replace(teacher.config, train=train, lineage=lineage).write(out)
    return out


def discard_student(student_dir: Path) -> None:
    """Remove what create_student wrote (and the directory, when nothing else is in it)."""
    for name in (CONFIG, *SPLIT_FILES, LOCK):  # the lock goes too: this process holds it
        (student_dir / name).unlink(missing_ok=True)
    if not any(student_dir.iterdir()):
        student_dir.rmdir()


def lineage_writer(student_dir: Path):
    """After each round: the student's config says how many steps it now samples in."""

    def write(record: dict) -> None:
        config = RunConfig.read(student_dir)
        config.lineage = {
            **config.lineage,
            "steps": record["student_steps"],
            "rounds_done": config.lineage["rounds_done"] + 1,
        }
        config.write(student_dir)

    return write


def build_student_trainer(student_dir: Path, teacher: LoadedRun, args):
    """A Trainer on the student's run directory whose network (and EMA) start as the teacher's EMA weights."""
    config = RunConfig.read(student_dir)
    domain = domain_from_config(config.data, student_dir)
    train_ids, heldout, _ = domain.reload()
    net = Transformer(config.net)
    net.load_state_dict(teacher.net.state_dict())
    device = next(teacher.net.parameters()).device
    trainer = Trainer(
        student_dir, teacher.objective, net, train_ids, heldout, domain.tokenizer().real_tokens, config.train, device
    )
    return trainer, domain, heldout


def describe_budget(args) -> str:
    return f"{args.time_budget:g} min shared" if args.time_budget is not None else f"{args.train_steps} steps each"


def add_parser(sub) -> None:
    d = sub.add_parser(
        "distill",
        help="a student that samples in fewer steps: self-distillation through time, halving the steps per round",
    )
    d.add_argument("run", help="the teacher's run directory (mdlm or sedd, absorbing)")
    d.add_argument("--out", required=True, help="the student's run directory (new)")
    d.add_argument("--steps", type=positive_int, required=True, help="the student's sampling steps: teacher's / 2^r")
    d.add_argument(
        "--teacher-steps",
        type=positive_int,
        help=f"the teacher's steps, where halving starts (default {DEFAULT_TEACHER_STEPS}; a student's own count)",
    )
    d.add_argument("--train-steps", type=positive_int, default=200, help="optimiser steps per halving round (200)")
    d.add_argument(
        "--time-budget",
        type=number(float, 0, 1e7, low_open=True),
        metavar="MIN",
        help="minutes in all, split among rounds",
    )
    d.add_argument("--lr", type=number(float, 0, 10, low_open=True), help="peak learning rate (the teacher's)")
    d.add_argument("--batch-size", type=number(int, 1, 65_536), help="records per step (the teacher's)")
    d.add_argument(
        "--warmup", type=positive_int, help="warm-up steps of the first round (the teacher's; at most a tenth of it)"
    )
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument("--eval-time-samples", type=number(int, 1, 10_000), default=4)
    d.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    add_runtime_arguments(d)
    d.set_defaults(func=cmd_distill)
