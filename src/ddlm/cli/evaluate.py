"""`ddlm eval`: a trained run -> one task (held-out likelihood, Sudoku, protein metrics) -> JSON and a line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .. import api
from ..errors import UserError
from ..evaluate.exact import evaluate_exact
from ..evaluate.likelihood import evaluate_bound
from ..ordering import ORDERS
from ..rundir import EVAL, PROTEIN_METRICS
from ..sampling import SampleSpec
from .args import (
    SEED,
    add_runtime_arguments,
    add_steering_arguments,
    add_threshold_argument,
    log,
    number,
    order_policy,
    positive_int,
)
from .sample import Session, add_guidance_arguments

DIFFICULTY_GIVENS = {"easy": 36, "medium": 30, "hard": 25}


def cmd_eval(args) -> int:
    session = Session.open(args)
    task = "proteins" if args.samples else args.task
    result, line = TASKS[task](args, session)
    print(json.dumps(result) if args.json else line)
    return 0


def eval_likelihood(args, session: Session) -> tuple[dict, str]:
    """The held-out bound in bits per token (and per character for text), saved as RUN/eval.json."""
    loaded, domain = session.loaded, session.domain
    heldout = evaluated_part(args, domain)
    if args.max_sequences:
        heldout = heldout[: args.max_sequences]
    labels = heldout_labels(args, session)
    if labels is not None and args.max_sequences:
        labels = labels[: args.max_sequences]
    bar = tqdm(total=len(heldout), disable=args.quiet, file=sys.stderr, unit="seq", dynamic_ncols=True)
    common = dict(
        batch_size=args.batch_size,
        device=session.device,
        autocast_dtype=None if args.precision == "auto" else session.amp,
        progress=bar,
        labels=labels,
    )
    real_tokens = domain.tokenizer().real_tokens(heldout)
    if args.likelihood == "exact":
        order = order_policy(args.order or "top-prob", args.order_noise, False, args.threshold)
        steps = args.exact_steps or heldout.shape[1]
        result = evaluate_exact(loaded.net, loaded.objective, heldout, real_tokens, order, steps, **common)
    else:
        result = evaluate_bound(
            loaded.net, loaded.objective, heldout, real_tokens, args.time_samples, seed=args.seed, **common
        )
    bar.close()
    if args.part == "heldout":  # the characters per token were counted on the held-out part
        result.update(domain.per_token_extras(result["bits_per_token"]))
    config = loaded.config
    result.update(objective=config.objective, process=config.process, step=loaded.checkpoint.step, weights="ema")
    result["part"] = args.part
    if args.part == "heldout":  # eval.json is the test figure; a validation figure is printed only
        (loaded.run_dir / EVAL).write_text(json.dumps(result, indent=1))
    if config.labels:
        result["given"] = "label" if labels is not None else "null label"
    se = f" +- {result['mc_standard_error']:.4f} (MC s.e.)" if "mc_standard_error" in result else ""
    given = ""
    if config.labels:
        given = ", given each record's label" if labels is not None else ", given the null label"
    line = (
        f"{result['bits_per_token']:.4f} bits/token{se}: {result['bound']} on {result['sequences']} "
        f"{PART_NAMES[args.part]} sequences, {result['tokens']} tokens, step {result['step']}{given}"
    )
    return result, line


PART_NAMES = {"heldout": "held-out", "validation": "validation"}


def evaluated_part(args, domain) -> torch.Tensor:
    """The held-out (test) sequences, or with --part validation the validation part that chose the run's
    checkpoints (all of it: training evaluates an evenly spaced subset)."""
    if args.part == "heldout":
        return domain.heldout()
    validation = domain.validation()
    if validation is None:
        raise UserError(f"--part validation: {args.run} has no validation part (trained without one)")
    return validation


def heldout_labels(args, session: Session):
    """A labelled run's labels of the evaluated part (the bound on -log p(x | y)), or None: an unlabelled
    run, or --null-label (the bound of the unconditional model the label dropout trained)."""
    config = session.loaded.config
    if args.null_label and not config.labels:
        raise UserError(f"--null-label: {args.run} was trained without labels")
    if not config.labels or args.null_label:
        return None
    if args.part == "validation":
        return session.domain.validation_labels(config.label_names)
    return session.domain.heldout_labels(config.label_names)


def eval_sudoku(args, session: Session) -> tuple[dict, str]:
    """Solve puzzles with their givens clamped: solved fraction and cell accuracy."""
    if session.domain.name != "sudoku":
        raise UserError(f"--task sudoku: {args.run} is a {session.domain.name} run")
    from ..evaluate import sudoku as sudoku_eval

    givens = args.givens or DIFFICULTY_GIVENS[args.difficulty]
    puzzles, solutions = session.domain.puzzles(args.puzzles, givens, args.n, args.puzzle_seed)
    spec = SampleSpec(steps=args.steps, batch_size=args.batch_size)
    spec.order = order_policy(args.order, args.order_noise, args.remask, args.threshold)
    options = steering_options(args)
    session = api.guided(session, options)
    spec = api.steered_spec(session, spec, options)
    bar = tqdm(total=len(puzzles), disable=args.quiet, file=sys.stderr, unit="puzzle", dynamic_ncols=True)
    loaded = session.loaded
    predictions, nfe, seconds = sudoku_eval.solve(
        loaded.net,
        loaded.objective,
        puzzles,
        spec,
        seed=args.seed,
        device=session.device,
        amp=session.amp,
        progress=bar,
    )
    bar.close()
    result = sudoku_eval.score(predictions, solutions, puzzles)
    result.update(
        order=args.order or "tweedie",
        steps=args.steps,
        nfe=nfe,
        seconds=seconds,
        puzzles=args.puzzles or f"generated: {givens} givens, seed {args.puzzle_seed}",
        steering=steering_record(args),
    )
    line = (
        f"solved {result['solved']:.1%} of {result['n']} puzzles ({result['givens_mean']:.1f} givens on "
        f"average), cell accuracy {result['cell_accuracy']:.1%}, order {result['order']}"
    )
    return result, line


def eval_proteins(args, session: Session) -> tuple[dict, str]:
    """Offline protein metrics of samples (a FASTA file, or fresh ones) beside held-out and shuffled sequences."""
    domain = session.domain
    if domain.name != "protein":
        raise UserError(f"--samples / --task proteins: {args.run} is a {domain.name} run, not a protein run")
    from ..data.fasta import read_records
    from ..evaluate.protein import protein_report

    well_formed, seconds = None, None
    if args.samples:
        samples = read_records(args.samples)
    else:
        drawn = api.draw_samples(session, args.n, steering_options(args), quiet=args.quiet)
        samples, seconds, well_formed = drawn.texts, drawn.seconds, sum(drawn.valid) / len(drawn.valid)
    heldout = [domain.tokenizer().decode(row)[0] for row in domain.heldout()]
    log(f"computing metrics for {len(samples)} samples (alignment, profile HMM)...")
    result = protein_report(samples, domain.train_records(), heldout, seed=args.seed, max_len=domain.max_residues)
    if well_formed is not None:
        result["samples"]["well_formed"] = well_formed
    result["settings"]["samples_from"] = args.samples or f"{args.n} fresh samples, {args.steps} steps"
    result["settings"]["steering"] = steering_record(args)
    if seconds is not None:  # the sampling alone, on this machine's threads (torch.get_num_threads())
        result["settings"].update(sampling_seconds=seconds, threads=torch.get_num_threads())
    (Path(args.run) / PROTEIN_METRICS).write_text(json.dumps(result, indent=1))
    rows = [k for k in ("samples", "natural", "shuffled") if k in result]
    keys = [k for k, v in result["samples"].items() if isinstance(v, int | float)]
    lines = [f"{'metric':32s}" + "".join(f"{r:>12s}" for r in rows)]
    lines += [f"{k:32s}" + "".join(f"{result[r].get(k, float('nan')):12.4f}" for r in rows) for k in keys]
    return result, "\n".join(lines)


TASKS = {"likelihood": eval_likelihood, "sudoku": eval_sudoku, "proteins": eval_proteins}

STEERING = ("remask", "reward", "particles", "reward_temperature", "resample", "resampler", "pick", "remask_rate",
            "condition", "cfg", "predictor", "target", "guidance", "guide_approx")  # fmt: skip


def steering_options(args) -> api.Options:
    """The sampling options of `--task sudoku|proteins`: steps, batch, seed, order and every steering flag."""
    return api.Options.from_flags(args)


def steering_record(args) -> dict:
    """The steering flags that differ from plain sampling, for the JSON record."""
    plain = api.Options()
    return {k: str(v) for k in STEERING if (v := getattr(args, k)) != getattr(plain, k)}


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="held-out likelihood bound in bits per token")
    e.add_argument("run", help="run directory")
    e.add_argument("--time-samples", type=positive_int, default=8, help="time samples per sequence (diffusion)")
    e.add_argument("--batch-size", type=positive_int, default=64)
    e.add_argument("--max-sequences", type=positive_int, help="evaluate only the first N held-out sequences")
    e.add_argument(
        "--part",
        choices=tuple(PART_NAMES),
        default="heldout",
        help="likelihood: the held-out test part (default; written to RUN/eval.json), or the whole validation "
        "part that chose the checkpoints (printed only; no per-character figure)",
    )
    e.add_argument("--seed", type=SEED, default=0)
    e.add_argument(
        "--likelihood",
        choices=("bound", "exact"),
        default="bound",
        help="bound: the NELBO (random-order masking; exact for AR); exact: masked diffusion's exact likelihood as "
        "it samples with a deterministic --order (default top-prob) in --exact-steps steps (DUEL)",
    )
    e.add_argument(
        "--exact-steps",
        type=positive_int,
        metavar="S",
        help="--likelihood exact: the sampler's steps (default: one per position)",
    )
    e.add_argument(
        "--null-label",
        action="store_true",
        help="a labelled run: the bound given the null label (the unconditional model) instead of each "
        "held-out record's own label",
    )
    e.add_argument(
        "--task",
        choices=list(TASKS),
        default="likelihood",
        help="sudoku: solve puzzles (givens clamped); proteins: offline metrics of samples",
    )
    e.add_argument("--samples", help="proteins: a FASTA file of samples to judge (default: --n fresh samples)")
    e.add_argument(
        "--order",
        choices=ORDERS.names(),
        help="sudoku: unmasking order (default: Tweedie, random); --likelihood exact: the sampler's order (top-prob)",
    )
    e.add_argument("--order-noise", type=number(float, 0, 1e6), default=0.0, metavar="G")
    e.add_argument(
        "--remask",
        action="store_true",
        help="sudoku / proteins: RDM, committed tokens that are outranked return to the mask (implies --order "
        "top-prob); with --particles, particles can take back early choices",
    )
    add_threshold_argument(e)
    e.add_argument("--puzzles", help="sudoku: a puzzle file (puzzle,solution or puzzle-only lines)")
    e.add_argument(
        "--difficulty",
        choices=sorted(DIFFICULTY_GIVENS),
        default="medium",
        help="sudoku: generated puzzles with 36 / 30 / 25 givens",
    )
    e.add_argument("--givens", type=positive_int, help="sudoku: generated puzzles with this many givens")
    e.add_argument("--n", type=positive_int, default=200, help="sudoku: puzzles to generate; proteins: samples to draw")
    e.add_argument("--puzzle-seed", type=int, default=777, help="sudoku: seed of the generated puzzles")
    e.add_argument("--steps", type=positive_int, default=81, help="sudoku / proteins: reverse-process steps")
    e.add_argument("--json", action="store_true")
    add_steering_arguments(e)
    add_guidance_arguments(e)
    add_runtime_arguments(e)
    e.set_defaults(func=cmd_eval)
