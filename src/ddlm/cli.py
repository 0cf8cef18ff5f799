"""Command line: `ddlm train | sample | infill | eval`.

`--json` prints exactly one JSON object on stdout; logs and progress bars go to stderr. A mistake in
the input (file, record, flag, template) prints one line naming it and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from .bench import add_parser as add_bench_parser
from .block_diffusion import BlockDiffusion
from .data.fasta import write_fasta
from .domains import domain_for_spec, domain_from_config
from .errors import UserError
from .evaluate.likelihood import evaluate_bound
from .networks import PRESETS, NetConfig, Transformer
from .objectives import AutoRegressive
from .ordering import ORDERS
from .processes import PROCESSES
from .run import OBJECTIVES, autocast_dtype, build_objective, load_run, pick_device, read_config, write_config
from .sampling import STEP_RULES, SampleSpec, sample_many
from .schedules import SCHEDULES
from .train import StopTraining, TrainConfig, Trainer


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


# --- train ----------------------------------------------------------------------------------------


def default_schedule(process: str) -> dict:
    return {"name": "geometric"} if process == "uniform" else {"name": "loglinear", "eps": 1e-3}


def check_combination(args) -> None:
    """Reject flag combinations that have no meaning, naming the flags."""
    if args.objective == "mdlm" and args.process != "absorbing":
        raise UserError("--objective mdlm needs --process absorbing (its SUBS parameterisation is for masking)")
    if args.objective == "ar":
        if args.process != "absorbing" or args.schedule or args.time_conditioning:
            raise UserError("--objective ar takes no --process, --schedule or --time-conditioning (it has no noise)")
    if args.objective != "d3pm" and (args.diffusion_steps is not None or args.hybrid_lambda is not None):
        raise UserError("--diffusion-steps and --hybrid-lambda apply to --objective d3pm only")
    if args.objective != "bd3lm" and args.diffusion_block is not None:
        raise UserError("--diffusion-block applies to --objective bd3lm only")
    if args.objective == "bd3lm" and (args.process != "absorbing" or args.time_conditioning):
        # each block has its own noise level, which one per-sequence time embedding cannot carry
        raise UserError("--objective bd3lm needs --process absorbing and takes no --time-conditioning")


def check_length(args, length: int) -> None:
    """Flags that depend on the data: bd3lm's blocks must tile the training length."""
    if args.objective == "bd3lm" and length % diffusion_block(args):
        raise UserError(
            f"--diffusion-block {diffusion_block(args)} does not divide the training length {length} "
            "(text: --block-size; proteins: --max-len + 2)"
        )


def diffusion_block(args) -> int:
    return 4 if args.diffusion_block is None else args.diffusion_block


def data_config(args) -> dict:
    kind = domain_for_spec(args.data)
    cfg = {"spec": args.data, "kind": kind}
    if kind == "protein":
        cfg.update(max_residues=args.max_len, heldout_fraction=args.heldout_fraction, skip_invalid=args.skip_invalid)
    elif kind == "text":
        cfg.update(tokenizer=args.tokenizer, block_size=args.block_size, max_docs=args.max_docs)
    else:  # sudoku: the stream is seeded by the run
        cfg.update(batch_size=args.batch_size or TrainConfig.batch_size, seed=args.seed)
    return cfg


def new_config(args, data_cfg: dict, vocab_size: int, length: int, tokenizer_cfg: dict) -> dict:
    process = PROCESSES[args.process](vocab_size)
    schedule = default_schedule(args.process)
    if args.schedule:
        schedule = {"name": args.schedule}
    options = {}
    if args.objective == "d3pm":
        options = {
            "steps": args.diffusion_steps or 1000,
            "hybrid_lambda": 0.01 if args.hybrid_lambda is None else args.hybrid_lambda,
        }
        if args.process == "absorbing" and schedule["name"] == "loglinear":
            schedule = {"name": "loglinear", "eps": 0.0}  # all masked at step T: no prior term is lost
    elif args.objective == "bd3lm":
        options = {"block_size": diffusion_block(args)}
    objective = OBJECTIVES[args.objective](process, None, **options)
    vocab_in, vocab_out = objective.net_vocab
    # Time conditioning: off for the absorbing process (costs nothing, makes caching exact), on otherwise.
    time_cond = args.time_conditioning if args.time_conditioning is not None else args.process != "absorbing"
    net = NetConfig(
        vocab_in=vocab_in,
        vocab_out=vocab_out,
        max_len=length,
        time_conditioning=time_cond and not objective.causal,
        causal=objective.causal,
        dropout=args.dropout,
        layout="sudoku" if data_cfg["kind"] == "sudoku" else "sequence",
        positions="sinusoidal" if data_cfg["kind"] == "sudoku" else "rotary",
        **PRESETS[args.preset],
    )
    train = TrainConfig(seed=args.seed, precision=args.precision)
    for name in ("batch_size", "lr", "warmup", "ema", "eval_every", "checkpoint_every", "weight_decay"):
        if getattr(args, name) is not None:
            setattr(train, name, getattr(args, name))
    return {
        "ddlm_config_version": 1,
        "data": data_cfg,
        "tokenizer": tokenizer_cfg,
        "vocab_size": vocab_size,
        "objective": args.objective,
        "process": args.process,
        "schedule": schedule,
        "objective_options": options,
        "preset": args.preset,
        "net": net.to_dict(),
        "train": train.to_dict(),
    }


def cmd_train(args) -> int:
    """Train in this process, or as one rank of a torchrun job (data-parallel; see distributed.py)."""
    from .distributed import session

    if args.steps is None and args.time_budget is None:
        args.steps = 2000
    run_dir = Path(args.out)
    # flags that change how a run is operated, not what it computes: they apply on --resume too
    operational = {
        name: getattr(args, name)
        for name in ("log_every", "max_bad_steps", "keep_checkpoints")
        if getattr(args, name, None) is not None
    }
    with session(args.device) as world:
        device = world.device
        say = log if world.is_main else (lambda msg: None)
        try:
            if not args.resume:
                # rank 0 alone checks the flags and the data and writes config and split; the other ranks
                # wait for it and then read the run directory as a resume would
                failure: BaseException | None = None
                if world.is_main:
                    try:
                        if (run_dir / "config.json").exists():
                            raise UserError(
                                f"--out {run_dir}: a run is already there; pass --resume to continue it, "
                                "or another --out"
                            )
                        check_combination(args)
                        world.rows(args.batch_size or TrainConfig.batch_size)  # splits evenly among the ranks?
                        data_cfg = data_config(args)
                        created = not run_dir.exists()
                        run_dir.mkdir(parents=True, exist_ok=True)
                        domain = domain_from_config(data_cfg, run_dir)
                        try:
                            train_ids, heldout_ids, info = domain.prepare()
                            tokenizer = domain.tokenizer()
                            batch = args.batch_size or TrainConfig.batch_size
                            if torch.is_tensor(train_ids) and len(train_ids) < batch:
                                raise UserError(
                                    f"{len(train_ids)} training records are fewer than one batch of {batch} "
                                    "(see --batch-size)"
                                )
                            check_length(args, domain.length)
                        except BaseException:
                            if created:  # a rejected command leaves nothing behind
                                shutil.rmtree(run_dir, ignore_errors=True)
                            raise
                        config = new_config(args, data_cfg, tokenizer.vocab_size, domain.length, tokenizer.config())
                        config["train"].update(operational)
                        write_config(run_dir, config)
                    except BaseException as e:
                        failure = e
                if world.any(failure is not None)[0]:
                    if failure is not None:
                        raise failure
                    return 2  # rank 0 reports the error
            if args.resume or not world.is_main:
                config = read_config(run_dir)
                config["train"].update(operational)
                domain = domain_from_config(config["data"], run_dir)
                train_ids, heldout_ids, info = domain.reload()
            tokenizer = domain.tokenizer()
            train_cfg = TrainConfig(**{**config["train"], "betas": tuple(config["train"]["betas"])})
            torch.manual_seed(train_cfg.seed)
            net = Transformer(NetConfig(**config["net"]))
            objective = build_objective(config)
            trainer = Trainer(
                run_dir, objective, net, train_ids, heldout_ids, tokenizer.real_tokens, train_cfg, device, world
            )
            if args.resume:
                if not trainer.restore():
                    raise UserError(f"--resume: {run_dir} has no valid checkpoint to resume from")
                say(f"resuming {run_dir} at step {trainer.step}")
        except UserError:
            if world.is_main:
                raise
            return 2  # the same mistake is reported once, by rank 0
        parallel = f", {world.size} processes (global batch {train_cfg.batch_size})" if world.distributed else ""
        say(
            f"{domain.describe(info)}; {net.num_parameters() / 1e6:.2f}M parameters; "
            f"{config['objective']}/{config['process']}; device {device}{parallel}, "
            f"precision {'bf16 autocast' if trainer.amp else 'fp32'}"
        )
        try:
            minutes = args.time_budget
            summary = trainer.fit(args.steps, None if minutes is None else minutes * 60, not args.quiet)
        except StopTraining as stop:
            say(f"ddlm: {stop}")
            return stop.exit_code
    if not world.is_main:
        return 0  # the final evaluation and samples are rank 0's
    final = evaluate_bound(
        trainer.ema_net,
        objective,
        heldout_ids,
        tokenizer.real_tokens(heldout_ids),
        time_samples=args.eval_time_samples,
        device=device,
        autocast_dtype=trainer.amp,
    )
    add_per_char(final, domain)
    result = {"run": str(run_dir), **summary, "heldout": final}
    if args.samples:
        spec = SampleSpec(steps=args.sample_steps)
        ids, nfe, _ = sample_many(
            trainer.ema_net,
            objective,
            args.samples,
            domain.length,
            spec,
            seed=train_cfg.seed,
            device=device,
            amp=trainer.amp,
        )
        texts, valid = domain.decode(ids)
        path = domain.write_samples(run_dir / "samples", texts, valid)
        result["samples"] = {"path": str(path), "n": len(texts), "valid_fraction": sum(valid) / len(valid)}
    if domain.kind == "protein":
        counts = Counter("".join(domain.train_records()))
        total = sum(counts.values())
        result["composition_entropy_bits"] = -sum(c / total * math.log2(c / total) for c in counts.values())
    result["loss_plot"] = str(run_dir / "loss.png")
    result["metrics"] = str(run_dir / "metrics.jsonl")
    if args.json:
        print(json.dumps(result))
    else:
        h = final
        what = "residues + end markers" if domain.kind == "protein" else "tokens"
        print(
            f"held-out NELBO: {h['bits_per_token']:.4f} bits/token (+- {h['mc_standard_error']:.4f} MC s.e.; "
            f"{h['tokens']} tokens = {what}, {h['time_samples']} time samples per sequence)"
            if "mc_standard_error" in h
            else f"held-out NLL: {h['bits_per_token']:.4f} bits/token (exact)"
        )
        if "bits_per_char" in h:
            print(f"               {h['bits_per_char']:.4f} bits/character")
        if "composition_entropy_bits" in result:
            print(f"amino-acid composition entropy of the training set: {result['composition_entropy_bits']:.4f} bits")
        print(f"trained {summary['steps']} steps in {summary['seconds'] / 60:.1f} min")
        if "samples" in result:
            print(f"samples:     {result['samples']['path']} ({result['samples']['valid_fraction']:.0%} well formed)")
        print(f"checkpoints: {run_dir / 'checkpoints'}")
        print(f"loss curve:  {result['loss_plot']}")
        print(f"metrics:     {result['metrics']}")
    return 0


def add_per_char(result: dict, domain) -> None:
    """Text: bits per character = bits per token / characters per token of the held-out split."""
    if domain.kind == "text":
        result["chars_per_token"] = domain.chars_per_token()
        result["bits_per_char"] = result["bits_per_token"] / result["chars_per_token"]


# --- sample / infill ------------------------------------------------------------------------------


def emit_samples(args, texts: list[str], valid: list[bool], nfe: int, seconds: float) -> None:
    if args.json:
        print(json.dumps({"samples": texts, "nfe": nfe, "seconds": seconds, "valid": valid}))
        return
    ids = [f"sample_{i} valid={v} nfe<={nfe}" for i, v in enumerate(valid)]
    if args.out:
        write_fasta(args.out, ids, texts)
        log(
            f"wrote {len(texts)} sequences to {args.out} ({nfe} network evaluations per sequence at most, "
            f"{seconds:.1f} s)"
        )
    else:
        for name, text in zip(ids, texts, strict=True):
            print(f">{name}\n{text}")


def _loaded(args):
    device = pick_device(args.device)
    loaded = load_run(args.run, device=device)
    amp = autocast_dtype(args.precision, device)
    return loaded, domain_from_config(loaded.config["data"], Path(args.run)), device, amp


def sample_spec(args, domain, objective) -> SampleSpec:
    """Validate the sampling flags against the run and turn them into a SampleSpec."""
    spec = SampleSpec(
        steps=args.steps, rule=STEP_RULES[args.sampler](), use_cache=not args.no_cache, batch_size=args.batch_size
    )
    order = getattr(args, "order", None)
    if getattr(args, "remask", False) and order is None:
        order = "top-prob"  # RDM re-ranks by confidence
    if order is not None:
        if isinstance(objective, AutoRegressive) or objective.process.name != "absorbing":
            raise UserError("--order and --remask need a masked (absorbing) diffusion run")
        spec.order = ORDERS[order](noise=args.order_noise, remask=args.remask)
    if getattr(args, "semi_ar", False) or getattr(args, "length", None):
        if not (args.semi_ar and args.length):
            raise UserError("--semi-ar and --length N go together")
        if isinstance(objective, BlockDiffusion):
            raise UserError("--semi-ar: a bd3lm run already samples block by block; it has no semi-AR mode")
        if not domain.supports_semi_ar:
            raise UserError(f"--semi-ar: {domain.kind} records have fixed start and end markers; use a text run")
        spec.semi_ar_length = args.length
    return spec


def _sample_and_emit(args, loaded, domain, device, amp, spec) -> int:
    bar = tqdm(total=args.n, disable=args.quiet, file=sys.stderr, unit="seq", dynamic_ncols=True)
    ids, nfe, seconds = sample_many(
        loaded.net, loaded.objective, args.n, domain.length, spec, seed=args.seed, device=device, amp=amp, progress=bar
    )
    bar.close()
    texts, valid = domain.decode(ids)
    emit_samples(args, texts, valid, nfe, seconds)
    return 0


def cmd_sample(args) -> int:
    loaded, domain, device, amp = _loaded(args)
    spec = sample_spec(args, domain, loaded.objective)
    if args.animate:
        write_animation(args, loaded, domain, device, amp, spec)
    return _sample_and_emit(args, loaded, domain, device, amp, spec)


def write_animation(args, loaded, domain, device, amp, spec) -> None:
    if isinstance(loaded.objective, AutoRegressive | BlockDiffusion) or spec.semi_ar_length:
        raise UserError("--animate shows the reverse diffusion; it needs a non-block diffusion run without --semi-ar")
    from .animate import animate
    from .sampling import generate

    gen = torch.Generator(device).manual_seed(args.seed)
    with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        result = generate(
            loaded.net,
            loaded.objective,
            spec.rule,
            min(args.n, 8),
            domain.length,
            spec.steps,
            order=spec.order,
            generator=gen,
            device=device,
            keep_history=True,
        )
    tok = domain.tokenizer()
    alphabet = getattr(tok, "alphabet", "")
    path = animate([h.cpu() for h in result.history], Path(args.animate), alphabet, loaded.objective.vocab_size)
    log(f"wrote the denoising animation to {path}")


def cmd_infill(args) -> int:
    loaded, domain, device, amp = _loaded(args)
    spec = sample_spec(args, domain, loaded.objective)
    spec.clamp, spec.clamp_values, spec.allowed = domain.template(args.template)
    return _sample_and_emit(args, loaded, domain, device, amp, spec)


# --- eval -----------------------------------------------------------------------------------------


DIFFICULTY_GIVENS = {"easy": 36, "medium": 30, "hard": 25}


def cmd_eval_sudoku(args, loaded, domain, device, amp) -> int:
    if domain.kind != "sudoku":
        raise UserError(f"--task sudoku: {args.run} is a {domain.kind} run")
    from .evaluate import sudoku as sudoku_eval

    givens = args.givens or DIFFICULTY_GIVENS[args.difficulty]
    puzzles, solutions = domain.puzzles(args.puzzles, givens, args.n, args.puzzle_seed)
    spec = SampleSpec(steps=args.steps, batch_size=args.batch_size)
    if args.order:
        spec.order = ORDERS[args.order](noise=args.order_noise)
    bar = tqdm(total=len(puzzles), disable=args.quiet, file=sys.stderr, unit="puzzle", dynamic_ncols=True)
    predictions, nfe, seconds = sudoku_eval.solve(
        loaded.net, loaded.objective, puzzles, spec, seed=args.seed, device=device, amp=amp, progress=bar
    )
    bar.close()
    result = sudoku_eval.score(predictions, solutions, puzzles)
    result.update(
        order=args.order or "tweedie",
        steps=args.steps,
        nfe=nfe,
        seconds=seconds,
        puzzles=args.puzzles or f"generated: {givens} givens, seed {args.puzzle_seed}",
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"solved {result['solved']:.1%} of {result['n']} puzzles ({result['givens_mean']:.1f} givens on "
            f"average), cell accuracy {result['cell_accuracy']:.1%}, order {result['order']}"
        )
    return 0


def cmd_eval_proteins(args, loaded, domain, device, amp) -> int:
    """Offline protein metrics of samples (a FASTA file, or fresh ones) beside held-out and shuffled sequences."""
    if domain.kind != "protein":
        raise UserError(f"--samples / --task proteins: {args.run} is a {domain.kind} run, not a protein run")
    from .data.fasta import read_records
    from .evaluate.protein import protein_report

    if args.samples:
        samples = read_records(args.samples)
        well_formed = None
    else:
        spec = SampleSpec(steps=args.steps, batch_size=args.batch_size)
        bar = tqdm(total=args.n, disable=args.quiet, file=sys.stderr, unit="seq", dynamic_ncols=True)
        ids, _, _ = sample_many(
            loaded.net,
            loaded.objective,
            args.n,
            domain.length,
            spec,
            seed=args.seed,
            device=device,
            amp=amp,
            progress=bar,
        )
        bar.close()
        samples, valid = domain.decode(ids)
        well_formed = sum(valid) / len(valid)
    heldout = [domain.tokenizer().decode(row)[0] for row in domain.heldout()]
    log(f"computing metrics for {len(samples)} samples (alignment, profile HMM)...")
    result = protein_report(samples, domain.train_records(), heldout, seed=args.seed, max_len=domain.max_residues)
    if well_formed is not None:
        result["samples"]["well_formed"] = well_formed
    result["settings"]["samples_from"] = args.samples or f"{args.n} fresh samples, {args.steps} steps"
    (Path(args.run) / "protein_metrics.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        rows = [k for k in ("samples", "natural", "shuffled") if k in result]
        keys = [k for k, v in result["samples"].items() if isinstance(v, int | float)]
        print(f"{'metric':32s}" + "".join(f"{r:>12s}" for r in rows))
        for k in keys:
            print(f"{k:32s}" + "".join(f"{result[r].get(k, float('nan')):12.4f}" for r in rows))
    return 0


def cmd_eval(args) -> int:
    loaded, domain, device, amp = _loaded(args)
    if args.task == "sudoku":
        return cmd_eval_sudoku(args, loaded, domain, device, amp)
    if args.task == "proteins" or args.samples:
        return cmd_eval_proteins(args, loaded, domain, device, amp)
    heldout = domain.heldout()
    if args.max_sequences:
        heldout = heldout[: args.max_sequences]
    tokenizer = domain.tokenizer()
    bar = tqdm(total=len(heldout), disable=args.quiet, file=sys.stderr, unit="seq", dynamic_ncols=True)
    result = evaluate_bound(
        loaded.net,
        loaded.objective,
        heldout,
        tokenizer.real_tokens(heldout),
        time_samples=args.time_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        autocast_dtype=None if args.precision == "auto" else amp,
        progress=bar,
    )
    bar.close()
    add_per_char(result, domain)
    result.update(
        {
            "objective": loaded.config["objective"],
            "process": loaded.config["process"],
            "step": loaded.checkpoint.step,
            "weights": "ema",
        }
    )
    (Path(args.run) / "eval.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        se = f" +- {result['mc_standard_error']:.4f} (MC s.e.)" if "mc_standard_error" in result else ""
        print(
            f"{result['bits_per_token']:.4f} bits/token{se}: {result['bound']} on {result['sequences']} held-out "
            f"sequences, {result['tokens']} tokens, step {result['step']}"
        )
    return 0


# --- parser ---------------------------------------------------------------------------------------


def add_runtime_arguments(p: argparse.ArgumentParser, quiet_help: str = "no progress bar") -> None:
    """--device, --precision and --quiet, the same for every command that runs a network."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 autocast where the hardware supports it fast (fp32 master weights)",
    )
    p.add_argument("--quiet", action="store_true", help=quiet_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddlm", description="Discrete diffusion language models on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def number(kind, low, high, low_open=False, high_open=False):
        """An argparse type: an int or float in [low, high] (an end left open where asked)."""

        def parse(text: str):
            try:
                value = kind(text)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
            inside = (kind is int or math.isfinite(value)) and (low < value if low_open else low <= value)
            inside = inside and (value < high if high_open else value <= high)
            if not inside:
                lo, hi = "(" if low_open else "[", ")" if high_open else "]"
                shown = value if kind is float or abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
                raise argparse.ArgumentTypeError(f"{shown} must be in {lo}{low}, {high}{hi}")
            return value

        return parse

    t = sub.add_parser(
        "train",
        help="train a model; ends with held-out NELBO and a few samples",
        description="Train a model on --data into the run directory --out. Under torchrun it trains "
        "data-parallel: `torchrun --nproc_per_node N -m ddlm train ...` (--batch-size is the global batch).",
    )
    t.add_argument(
        "--data",
        required=True,
        help="acyp, tinystories, tinyshakespeare, text8, sudoku[:PUZZLES.csv], or a path to a FASTA "
        "(.fa, .fasta, .faa, .fas) or .txt file",
    )
    t.add_argument("--out", required=True, help="run directory (config, split, checkpoints, metrics, plots)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="small", help="network size (default small)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, help="total optimiser steps (default 2000)")
    budget.add_argument(
        "--time-budget",
        type=number(float, 0, 1e7, low_open=True),
        metavar="MIN",
        help="train for this many minutes",
    )
    t.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0)
    t.add_argument("--objective", choices=sorted(OBJECTIVES), default="sedd")
    t.add_argument("--process", choices=sorted(PROCESSES), default="absorbing")
    t.add_argument("--schedule", choices=sorted(SCHEDULES), help="default: loglinear (absorbing), geometric (uniform)")
    t.add_argument(
        "--diffusion-steps", type=number(int, 1, 10**7), metavar="T", help="d3pm: number of discrete steps (1000)"
    )
    t.add_argument(
        "--hybrid-lambda", type=number(float, 0, 1e6), help="d3pm: weight of the auxiliary cross-entropy (0.01)"
    )
    t.add_argument(
        "--diffusion-block",
        type=positive_int,
        metavar="B",
        help="bd3lm: tokens per block, must divide the training length (4)",
    )
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
        "--batch-size", type=number(int, 1, 65_536), help="records per step, over all processes together (32)"
    )
    t.add_argument("--lr", type=number(float, 0, 10, low_open=True))
    t.add_argument("--warmup", type=positive_int)
    t.add_argument("--ema", type=number(float, 0, 1), help="EMA decay of the weights (default 0.999)")
    t.add_argument("--eval-every", type=positive_int)
    t.add_argument("--checkpoint-every", type=positive_int)
    t.add_argument(
        "--max-len", type=number(int, 1, 100_000), default=127, help="proteins: longest record in residues (127)"
    )
    t.add_argument("--tokenizer", default="char", help="text: char or bpe:N (byte-level BPE trained locally)")
    t.add_argument(
        "--block-size", type=number(int, 1, 100_000), default=256, help="text: tokens per training block (256)"
    )
    t.add_argument("--max-docs", type=positive_int, help="text: stories to stream from the hub when not on disk")
    t.add_argument(
        "--dropout", type=number(float, 0, 1, high_open=True), default=0.0, help="dropout in the transformer (0)"
    )
    t.add_argument("--weight-decay", type=number(float, 0, 1e6), help="AdamW weight decay on matrices (default 0)")
    t.add_argument("--heldout-fraction", type=number(float, 0, 1, low_open=True, high_open=True), default=0.05)
    t.add_argument("--skip-invalid", action="store_true", help="skip and count bad records instead of stopping")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest good checkpoint")
    t.add_argument(
        "--samples",
        type=number(int, 0, 1_000_000),
        default=16,
        help="sequences to sample at the end into RUN/samples.fasta",
    )
    t.add_argument("--sample-steps", type=number(int, 1, 100_000), default=128)
    t.add_argument("--eval-time-samples", type=number(int, 1, 10_000), default=4)
    t.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    t.add_argument("--log-every", type=positive_int, help="steps between training-loss lines in metrics.jsonl (25)")
    t.add_argument(
        "--max-bad-steps",
        type=positive_int,
        help="consecutive non-finite steps (skipped) before the run checkpoints and stops with exit code 1 (20)",
    )
    t.add_argument("--keep-checkpoints", type=positive_int, help="newest checkpoints kept on disk (3)")
    add_runtime_arguments(t)
    t.set_defaults(func=cmd_train)

    def sampling_args(p, default_n):
        p.add_argument("run", help="run directory")
        p.add_argument("--n", type=positive_int, default=default_n, help="number of sequences")
        p.add_argument("--steps", type=positive_int, default=128, help="reverse-process steps")
        p.add_argument("--sampler", choices=sorted(STEP_RULES), default="tau-leaping")
        p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0)
        p.add_argument("--batch-size", type=positive_int, default=64)
        p.add_argument("--out", help="FASTA file to write (default: stdout)")
        p.add_argument("--json", action="store_true", help='print {"samples", "nfe", "seconds"} as one JSON object')
        p.add_argument(
            "--no-cache",
            action="store_true",
            help="re-run the network at every step (for comparison: same distribution, other draws)",
        )
        p.add_argument(
            "--order",
            choices=sorted(ORDERS),
            help="masked runs: commit the best-ranked positions each step (Kim et al.) instead of random",
        )
        p.add_argument(
            "--order-noise", type=number(float, 0, 1e6), default=0.0, metavar="G", help="Gumbel noise on the ranking"
        )
        p.add_argument(
            "--remask",
            action="store_true",
            help="RDM: committed tokens that are outranked return to the mask (implies --order top-prob)",
        )
        add_runtime_arguments(p)

    s = sub.add_parser("sample", help="sample sequences from a trained run")
    sampling_args(s, 16)
    s.add_argument("--semi-ar", action="store_true", help="grow text past the model window, block by block")
    s.add_argument("--animate", metavar="GIF", help="also write a GIF of the first 8 samples being denoised")
    s.add_argument("--length", type=positive_int, help="with --semi-ar: tokens to generate")
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser(
        "infill",
        help="fill the '_' positions of a template",
        description="Sample the '_' positions of --template; every other position is kept as given.",
    )
    sampling_args(i, 4)
    i.add_argument("--template", required=True, help="residues with '_' at each position to fill, e.g. MKV__LL_A")
    i.set_defaults(func=cmd_infill)

    e = sub.add_parser("eval", help="held-out likelihood bound in bits per token")
    e.add_argument("run", help="run directory")
    e.add_argument("--time-samples", type=positive_int, default=8, help="time samples per sequence (diffusion)")
    e.add_argument("--batch-size", type=positive_int, default=64)
    e.add_argument("--max-sequences", type=positive_int, help="evaluate only the first N held-out sequences")
    e.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0)
    e.add_argument(
        "--task",
        choices=["likelihood", "sudoku", "proteins"],
        default="likelihood",
        help="sudoku: solve puzzles (givens clamped); proteins: offline metrics of samples",
    )
    e.add_argument("--samples", help="proteins: a FASTA file of samples to judge (default: --n fresh samples)")
    e.add_argument("--order", choices=sorted(ORDERS), help="sudoku: unmasking order (default: Tweedie, random)")
    e.add_argument("--order-noise", type=number(float, 0, 1e6), default=0.0, metavar="G")
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
    add_runtime_arguments(e)
    e.set_defaults(func=cmd_eval)
    add_bench_parser(sub)

    r = sub.add_parser("report", help="write one HTML page: loss curves, metric tables, plots, samples")
    r.add_argument("run", help="run directory")
    r.add_argument("--out", help="HTML file (default RUN/report.html)")
    r.set_defaults(func=cmd_report)

    x = sub.add_parser("export", help="save the model Hugging Face style: model.safetensors + config.json")
    x.add_argument("run", help="run directory")
    x.add_argument("folder", help="folder to write (upload it with `huggingface-cli upload`)")
    x.set_defaults(func=cmd_export)
    return parser


def cmd_report(args) -> int:
    from .report import write_report

    read_config(Path(args.run))
    print(write_report(Path(args.run), Path(args.out) if args.out else None))
    return 0


def cmd_export(args) -> int:
    from .hub import save_pretrained

    print(save_pretrained(args.run, args.folder))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"ddlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
