"""`ddlm train`: flags -> a run configuration -> the run directory -> the trainer -> the summary.

Under torchrun every process runs this command: rank 0 alone checks the flags and the data and
writes the run directory while the other ranks wait, then reads it as a resume would (see
distributed.py); rank 0 alone evaluates, samples and prints at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..checkpoint import CheckpointDir
from ..config import RunConfig, TrainConfig, option_owners
from ..data.labels import FROM_HEADERS, LabelFeed
from ..distributed import World, session
from ..domains import Domain, domain_class, domain_from_config
from ..errors import UserError
from ..evaluate.likelihood import evaluate_bound
from ..lr_schedules import LR_SCHEDULES
from ..networks import PRESETS, Transformer
from ..objectives import OBJECTIVES, Option
from ..processes import PROCESSES
from ..rundir import CHECKPOINTS, CONFIG, LOSS_PLOT, METRICS, SAMPLES, RunLock, require_run_dir, trim_log
from ..sampling import SampleSpec, sample_many
from ..schedules import SCHEDULES
from ..train import StopTraining, Trainer
from .args import SEED, Deprecated, add_runtime_arguments, log, number, positive_int
from .resume import check_resume_flags

DEFAULT_STEPS = 2000


@dataclass
class TrainingRun:
    """A run directory with its configuration and its data, ready to train."""

    run_dir: Path
    config: RunConfig
    domain: Domain
    train_ids: object  # a tensor of records, or a step -> batch callable (an endless stream)
    heldout_ids: torch.Tensor
    info: dict


def cmd_train(args) -> int:
    """Train in this process, or as one rank of a torchrun job (data-parallel; see distributed.py).
    Rank 0 holds the run directory's lock throughout: a second writer stops at once."""
    with session(args.device) as world, ExitStack() as held:
        say = log if world.is_main else (lambda msg: None)
        try:
            run = prepare_run(args, world, held)
            trainer = build_trainer(run, world)
            if args.resume:
                resume(trainer, run.run_dir, say)
        except UserError:
            if world.is_main:
                raise
            return 2  # the same mistake is reported once, by rank 0
        say(describe(run, trainer, world))
        steps = args.steps if args.steps is not None or args.time_budget is not None else DEFAULT_STEPS
        budget = None if args.time_budget is None else args.time_budget * 60
        try:
            summary = trainer.fit(steps, budget, not args.quiet)
        except StopTraining as stop:
            say(f"ddlm: {stop}")
            return stop.exit_code
    if not world.is_main:
        return 0  # the final evaluation and samples are rank 0's
    result = finish(args, run, trainer, summary)
    print(json.dumps(result) if args.json else summary_text(result, run.domain))
    return 0


def prepare_run(args, world: World, held: ExitStack) -> TrainingRun:
    """A new run directory (written by rank 0 while the other ranks wait), or the one to resume; rank 0
    takes the run's lock (into `held`) first, and every rank learns whether it could."""
    run_dir = Path(args.out)
    if args.data is None and not args.resume:
        raise UserError("--data is required to start a run (with --resume the run's own data is used)")
    failure: BaseException | None = None
    run = None
    if world.is_main:
        try:
            run = create_run(args, world, run_dir, held) if not args.resume else lock_existing(run_dir, held)
        except BaseException as e:
            failure = e
    if world.any(failure is not None)[0]:
        if failure is not None:
            raise failure
        raise UserError("rank 0 could not create or lock the run")
    if run is not None:
        return run
    return open_run(args, run_dir)


def lock_existing(run_dir: Path, held: ExitStack) -> None:
    """Rank 0 locks a run to resume; the run must exist."""
    if not (run_dir / CONFIG).is_file():
        require_run_dir(run_dir)  # names what is wrong with it
    held.enter_context(RunLock(run_dir))


def create_run(args, world: World, run_dir: Path, held: ExitStack) -> TrainingRun:
    """Check the flags, read and split the data, write the configuration; a rejected command leaves nothing."""
    config = RunConfig.from_flags(args, domain_class(args.data).config_from_flags(args.data, args))
    world.rows(config.train.batch_size)  # does the batch split evenly among the ranks?
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        held.enter_context(RunLock(run_dir))  # before looking: two new runs into one --out, one goes on
        if (run_dir / CONFIG).exists():
            created = False  # someone else's run: leave it be
            raise UserError(f"--out {run_dir}: a run is already there; pass --resume to continue it, or another --out")
        domain = domain_from_config(config.data, run_dir)
        train_ids, heldout_ids, info = domain.prepare()
        batch = config.train.batch_size
        if torch.is_tensor(train_ids) and len(train_ids) < batch:
            raise UserError(f"{len(train_ids)} training records are fewer than one batch of {batch} (see --batch-size)")
        config = config.with_data(domain, domain.tokenizer())
        if (config.train.keep_best or config.train.patience) and domain.validation() is None:
            raise UserError(
                "--keep-best and --patience choose on a validation part: "
                "give --validation-fraction F (FASTA or text data)"
            )
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    config.write(run_dir)
    return TrainingRun(run_dir, config, domain, train_ids, heldout_ids, info)


def open_run(args, run_dir: Path) -> TrainingRun:
    """An existing run directory and its data, with this session's operational flags applied; a flag that
    would change what the run is stops the command (cli/resume.py)."""
    config = RunConfig.read(run_dir)
    check_resume_flags(config, args, args.given, run_dir)
    session_flags = {k: getattr(args, k) for k in ("precision", "compile") if k in args.given}
    operational = {k: getattr(args, k) for k in TrainConfig.OPERATIONAL if k in args.given}
    config.train = replace(config.train, **operational, **session_flags)
    domain = domain_from_config(config.data, run_dir)
    train_ids, heldout_ids, info = domain.reload()
    return TrainingRun(run_dir, config, domain, train_ids, heldout_ids, info)


def build_trainer(run: TrainingRun, world: World) -> Trainer:
    """The trainer of a run; its evaluations during training use the validation part when there is one."""
    torch.manual_seed(run.config.train.seed)
    net = Transformer(run.config.net)
    real_tokens = run.domain.tokenizer().real_tokens
    validation = run.domain.validation()
    trainer = Trainer(
        run.run_dir,
        run.config.build_objective(),
        net,
        run.train_ids,
        run.heldout_ids if validation is None else validation,
        real_tokens,
        run.config.train,
        world.device,
        world,
    )
    trainer.eval_part = "heldout" if validation is None else "valid"
    if run.config.labels:
        add_labels(trainer, run, validation is not None)
    return trainer


def add_labels(trainer: Trainer, run: TrainingRun, validation: bool) -> None:
    """A labelled run: the trainer gives each batch its records' labels (dropped to null at the run's
    rate) and the evaluated records' bound their labels."""
    names, train = run.config.label_names, run.config.train
    feed = run.domain.train_labels(names)
    trainer.labels = LabelFeed(feed, train.batch_size, train.seed, run.config.labels["dropout"], len(names))
    evaluated = run.domain.validation_labels(names) if validation else run.domain.heldout_labels(names)
    trainer.heldout_labels = evaluated[trainer.heldout_rows]


def resume(trainer: Trainer, run_dir: Path, say) -> None:
    """Load the newest good checkpoint; the log's lines after it go, since those steps are trained again."""
    if not trainer.restore():
        if trainer.checkpoints.steps():  # damaged ones were reported: never start over silently
            raise UserError(f"--resume: {run_dir} has no valid checkpoint to resume from")
        # killed before its first checkpoint: step 0 is a function of the seed, so start there
        say(f"--resume: {run_dir} has no checkpoint yet; starting at step 0")
    dropped = trim_log(run_dir / METRICS, trainer.step) if trainer.world.is_main else 0
    redo = f" ({dropped} lines of {METRICS} after it are logged again)" if dropped else ""
    if trainer.step:
        say(f"resuming {run_dir} at step {trainer.step}{redo}")


def os_error_hint(args) -> str:
    """What to do after the file system failed under `ddlm train` (cli/__init__.py prints it)."""
    if CheckpointDir(Path(args.out)).steps():
        return "the newest good checkpoint is kept: once fixed, the same command with --resume continues from it"
    return "once fixed, run the command again"


def describe(run: TrainingRun, trainer: Trainer, world: World) -> str:
    parallel = f", {world.size} processes (global batch {trainer.cfg.batch_size})" if world.distributed else ""
    return (
        f"{run.domain.describe(run.info)}; {trainer.net.num_parameters() / 1e6:.2f}M parameters; "
        f"{run.config.objective}/{run.config.process}; device {world.device}{parallel}, "
        f"precision {'bf16 autocast' if trainer.amp else 'fp32'}{', compiled' if trainer.cfg.compile else ''}"
    )


def finish(args, run: TrainingRun, trainer: Trainer, summary: dict) -> dict:
    """The held-out bound of the EMA weights (the kept best ones with --keep-best), a few samples and what
    the data adds: the JSON summary."""
    tokenizer = run.domain.tokenizer()
    best = trainer.checkpoints.best() if trainer.cfg.keep_best else None
    if best is not None:
        trainer.ema_net.load_state_dict(best.section("ema"))
    final = evaluate_bound(
        trainer.ema_net,
        trainer.objective,
        run.heldout_ids,
        tokenizer.real_tokens(run.heldout_ids),
        time_samples=args.eval_time_samples,
        device=trainer.device,
        autocast_dtype=trainer.amp,
        labels=run.domain.heldout_labels(run.config.label_names) if run.config.labels else None,
    )
    final.update(run.domain.per_token_extras(final["bits_per_token"]))
    result = {"run": str(run.run_dir), **summary, "heldout": final}
    if best is not None:
        result["evaluated"] = {"checkpoint": "best", "step": best.step, **best.meta}
        result["evaluated"].pop("sha256")
    if "split" in run.info:
        result["split"] = {k: run.info.get(k) for k in ("split", "train", "validation", "heldout", "clusters")}
    if args.samples:
        spec = run.domain.framed(SampleSpec(steps=args.sample_steps), trainer.ema_net, args.samples, trainer.cfg.seed)
        ids, _, _ = sample_many(
            trainer.ema_net,
            trainer.objective,
            args.samples,
            run.domain.length,
            spec,
            seed=trainer.cfg.seed,
            device=trainer.device,
            amp=trainer.amp,
        )
        texts, valid = run.domain.decode(ids)
        path = run.domain.write_samples(run.run_dir / SAMPLES, texts, valid)
        result["samples"] = {"path": str(path), "n": len(texts), "valid_fraction": sum(valid) / len(valid)}
    result.update(run.domain.training_extras())
    result["loss_plot"] = str(run.run_dir / LOSS_PLOT)
    result["metrics"] = str(run.run_dir / METRICS)
    return result


def summary_text(result: dict, domain: Domain) -> str:
    h = result["heldout"]
    if h["bound"] != "exact":
        se = f"+- {h['mc_standard_error']:.4f} MC s.e.; " if "mc_standard_error" in h else ""
        lines = [
            f"held-out NELBO: {h['bits_per_token']:.4f} bits/token ({se}"
            f"{h['tokens']} tokens = {domain.token_unit}, {h['time_samples']} time samples per sequence)"
        ]
    else:
        lines = [f"held-out NLL: {h['bits_per_token']:.4f} bits/token (exact)"]
    if "bits_per_char" in h:
        lines.append(f"               {h['bits_per_char']:.4f} bits/character")
    if "composition_entropy_bits" in result:
        lines.append(
            f"amino-acid composition entropy of the training set: {result['composition_entropy_bits']:.4f} bits"
        )
    epochs = f" ({result['epochs']:.1f} epochs)" if "epochs" in result else ""
    lines.append(f"trained {result['steps']} steps{epochs} in {result['seconds'] / 60:.1f} min")
    if "evaluated" in result:
        e = result["evaluated"]
        lines.append(f"evaluated:   the best checkpoint, step {e['step']} (validation {e['valid_bits_per_token']:.4f})")
    if "samples" in result:
        lines.append(
            f"samples:     {result['samples']['path']} ({result['samples']['valid_fraction']:.0%} well formed)"
        )
    lines.append(f"checkpoints: {Path(result['run']) / CHECKPOINTS}")
    lines.append(f"loss curve:  {result['loss_plot']}")
    lines.append(f"metrics:     {result['metrics']}")
    return "\n".join(lines)


# --- the parser -----------------------------------------------------------------------------------


def add_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a model; ends with held-out NELBO and a few samples",
        description="Train a model on --data into the run directory --out. Under torchrun it trains "
        "data-parallel: `torchrun --nproc_per_node N -m ddlm train ...` (--batch-size is the global batch).",
    )
    t.add_argument(
        "--data",
        help="acyp, tinystories, tinyshakespeare, text8, sudoku[:PUZZLES.csv], or a path to a FASTA "
        "(.fa, .fasta, .faa, .fas) or .txt file; required for a new run, optional with --resume",
    )
    t.add_argument("--out", required=True, help="run directory (config, split, checkpoints, metrics, plots)")
    add_model_arguments(t)
    add_data_arguments(t)
    add_optimiser_arguments(t)
    add_output_arguments(t)
    add_runtime_arguments(t)
    t.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the training step's network with torch.compile (inductor): a minute or two of compiling, "
        "then faster steps for wide networks of fixed length (the README's Speed section says where it lost); "
        "the same loss, rounded differently, and other dropout draws (kept on --resume unless --no-compile)",
    )
    t.set_defaults(func=cmd_train, os_error_hint=os_error_hint)


def add_model_arguments(t) -> None:
    """The network, the objective and the objectives' own options."""
    t.add_argument("--preset", choices=sorted(PRESETS), default="small", help="network size (default small)")
    t.add_argument("--objective", choices=OBJECTIVES.names(), default="sedd")
    t.add_argument("--process", choices=PROCESSES.names(), default="absorbing")
    t.add_argument("--schedule", choices=SCHEDULES.names(), help="default: loglinear (absorbing), geometric (uniform)")
    for flag, owners in option_owners().items():
        add_option(t, next(o for o in owners[0].options if o.flag == flag), [cls.name for cls in owners])
    tc = t.add_mutually_exclusive_group()
    tc.add_argument(
        "--time-conditioning",
        dest="time_conditioning",
        action="store_true",
        default=None,
        help="feed the network the noise level (default: off for absorbing, on for uniform)",
    )
    tc.add_argument("--no-time-conditioning", dest="time_conditioning", action="store_false")
    t.add_argument(
        "--dropout", type=number(float, 0, 1, high_open=True), default=0.0, help="dropout in the transformer (0)"
    )
    t.add_argument(
        "--label-dropout",
        type=number(float, 0, 1, high_open=True),
        help="with --labels: the probability that a record's label is replaced by the null label in training, "
        "so the one network also learns p(x) for classifier-free guidance (0.1)",
    )


def add_option(t, option: Option, objectives: list[str]) -> None:
    """An objective's own flag; not given, it is None (the objective's default applies)."""
    help = f"{', '.join(objectives)}: {option.help} ({option.default_help or option.default})"
    if option.kind is bool:
        t.add_argument(option.flag, action="store_true", default=None, help=help)
    elif option.choices:
        t.add_argument(option.flag, choices=option.choices, help=help)
    elif option.parse is not None:  # checked here, kept as given
        t.add_argument(option.flag, type=checked(option.parse), metavar=option.metavar, help=help)
    else:
        t.add_argument(
            option.flag, type=number(option.kind, option.low, option.high), metavar=option.metavar, help=help
        )


def checked(parse):
    """An argparse type that checks the text with `parse` and keeps the text itself."""

    def check(text: str) -> str:
        parse(text)
        return text

    return check


def add_data_arguments(t) -> None:
    t.add_argument(
        "--max-len", type=number(int, 1, 100_000), default=127, help="proteins: longest record in residues (127)"
    )
    t.add_argument("--tokenizer", default="char", help="text: char or bpe:N (byte-level BPE trained locally)")
    seq_len = number(int, 1, 100_000)
    t.add_argument("--seq-len", type=seq_len, default=256, help="text: tokens per training sequence (256)")
    t.add_argument("--block-size", dest="seq_len", type=seq_len, action=Deprecated, new="--seq-len")
    t.add_argument("--max-docs", type=positive_int, help="text: stories to stream from the hub when not on disk")
    t.add_argument("--heldout-fraction", type=number(float, 0, 1, low_open=True, high_open=True), default=0.05)
    t.add_argument("--skip-invalid", action="store_true", help="skip and count bad records instead of stopping")
    t.add_argument(
        "--fixed-window",
        action="store_true",
        help="proteins: model the padded window of --max-len + 2 positions as one sequence, markers and padding "
        "included, instead of the length and the residues (p(n) p(residues | n), the default)",
    )
    t.add_argument(
        "--split",
        metavar="hash|identity:T",
        help="proteins: hash (each distinct sequence by its SHA-256, the default) or identity:T (clusters of >= T "
        "sequence identity from MMseqs2, each kept whole on one side, e.g. identity:0.5)",
    )
    t.add_argument(
        "--validation-fraction",
        type=number(float, 0, 1, high_open=True),
        help="proteins and text: the part kept for checkpoint selection and early stopping, apart from the "
        "held-out test part (0.05 with --split, --keep-best or --patience; else none)",
    )
    t.add_argument(
        "--train-records",
        type=positive_int,
        metavar="N",
        help="proteins: train on N records of the training part (the N with the lowest SHA-256, whatever the seed)",
    )
    t.add_argument(
        "--labels",
        metavar="FILE|" + FROM_HEADERS,
        help="FASTA: a label per record, from a table ('record id<TAB>label' lines) or, with 'headers', from "
        "each header's label=VALUE; a text file (documents separated by blank lines): a file whose line i is "
        "the label of document i; the model learns p(x | label) for ddlm sample --condition",
    )


def add_optimiser_arguments(t) -> None:
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, help=f"total optimiser steps (default {DEFAULT_STEPS})")
    budget.add_argument(
        "--time-budget", type=number(float, 0, 1e7, low_open=True), metavar="MIN", help="train for this many minutes"
    )
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument(
        "--batch-size", type=number(int, 1, 65_536), help="records per step, over all processes together (32)"
    )
    t.add_argument("--lr", type=number(float, 0, 10, low_open=True))
    t.add_argument(
        "--warmup", type=positive_int, help="warm-up steps of the learning rate (200; at most a tenth of the run)"
    )
    t.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES.names(),
        help="constant after the warm-up, or cosine down to a tenth at the run's last step (--steps, or the "
        "steps a --time-budget buys at the speed of its first steps); default constant",
    )
    t.add_argument("--ema", type=number(float, 0, 1), help="EMA decay of the weights (default 0.999)")
    t.add_argument("--weight-decay", type=number(float, 0, 1e6), help="AdamW weight decay on matrices (default 0)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest good checkpoint")
    t.add_argument(
        "--max-bad-steps",
        type=positive_int,
        help="consecutive non-finite steps (skipped) before the run checkpoints and stops with exit code 1 (20)",
    )


def add_output_arguments(t) -> None:
    t.add_argument("--eval-every", type=positive_int)
    t.add_argument("--checkpoint-every", type=positive_int)
    t.add_argument("--keep-checkpoints", type=positive_int, help="newest checkpoints kept on disk (3)")
    t.add_argument(
        "--keep-best",
        action="store_true",
        default=None,
        help="keep the EMA weights with the best validation bound (checkpoints/best.*); eval and sample use them",
    )
    t.add_argument(
        "--patience",
        type=positive_int,
        metavar="EVALS",
        help="stop when this many evaluations in a row (every --eval-every steps) bring no better validation bound",
    )
    t.add_argument("--log-every", type=positive_int, help="steps between training-loss lines in metrics.jsonl (25)")
    t.add_argument(
        "--samples", type=number(int, 0, 1_000_000), default=16, help="sequences to sample at the end into RUN/samples"
    )
    t.add_argument("--sample-steps", type=number(int, 1, 100_000), default=128)
    t.add_argument("--eval-time-samples", type=number(int, 1, 10_000), default=4)
    t.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
