"""What `ddlm train --resume` may change, and the refusal of a flag that would be ignored.

A resumed run continues the run its `config.json` describes. A flag is either *operational* (how
this session runs: how long, where, what it logs and keeps; it applies to the resumed run) or it
*defines the run* (the data, the network, the objective, the optimiser's settings, the seed). A
defining flag given on `--resume` must agree with the run's recorded value; if it does not, the
command stops before anything is written, naming the flag, the run's value and the user's.

Only flags the user typed count: argparse fills every flag with its default, so the command line
is parsed a second time with the defaults suppressed (`given_flags`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig, TrainConfig, option_dest, option_owners
from ..errors import UserError

# flags of this session only: they never change what the run computes (--data is required on every
# command line, so it is checked on its own: the same name, or a path to the same file)
SESSION = {"data", "out", "resume", "steps", "time_budget", "samples", "sample_steps", "eval_time_samples",
           "json", "quiet", "device", "precision", "compile"}  # fmt: skip
OPERATIONAL = SESSION | set(TrainConfig.OPERATIONAL)


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags a command line gives explicitly (`argv` starts with the command)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    typed = argparse.ArgumentParser(add_help=False)
    for action in subparsers.choices[argv[0]]._actions:  # argparse has no public way to copy its flags
        if action.dest != "help":
            typed._add_action(_suppressed(action))
    namespace, _ = typed.parse_known_args(argv[1:])
    return set(vars(namespace))


def _suppressed(action: argparse.Action) -> argparse.Action:
    """The same flag, default suppressed: it appears in the namespace only when typed."""
    clone = type(action).__new__(type(action))
    clone.__dict__.update(action.__dict__)
    clone.default = argparse.SUPPRESS
    clone.required = False
    return clone


def recorded(config: RunConfig) -> dict[str, Callable[[], Any]]:
    """For each defining flag, its value in the run as the flag would spell it (None: not recorded)."""
    data, train = config.data, config.train
    values: dict[str, Callable[[], Any]] = {
        "preset": lambda: config.preset,
        "objective": lambda: config.objective,
        "process": lambda: config.process,
        "schedule": lambda: (config.schedule or {}).get("name"),
        "time_conditioning": lambda: config.net.time_conditioning,
        "dropout": lambda: config.net.dropout,
        "seed": lambda: train.seed,
        "max_len": lambda: data.get("max_residues"),
        "tokenizer": lambda: data.get("tokenizer"),
        "seq_len": lambda: data.get("seq_len", data.get("block_size")),
        "max_docs": lambda: data.get("max_docs"),
        "heldout_fraction": lambda: data.get("heldout_fraction"),
        "skip_invalid": lambda: data.get("skip_invalid"),
        "fixed_window": lambda: None if "length_model" not in data else not data["length_model"],
        "labels": lambda: data.get("labels"),
        "label_dropout": lambda: (config.labels or {}).get("dropout"),
        "split": lambda: data.get("split"),
        "validation_fraction": lambda: data.get("validation_fraction"),
        "train_records": lambda: data.get("train_records"),
    }
    for name in TrainConfig.FLAGS:
        values.setdefault(name, lambda name=name: getattr(train, name))
    own = {o.flag: o for o in config.objective_class.options}
    for flag in option_owners():
        option = own.get(flag)
        values[option_dest(flag)] = (lambda o=option: config.objective_options.get(o.keyword)) if option else None
    return values


def check_resume_flags(config: RunConfig, args, given: set[str], run_dir: Path) -> None:
    """Raise a UserError naming every defining flag in `given` that disagrees with the run."""
    values = recorded(config)
    unknown = sorted(given - OPERATIONAL - set(values))
    if unknown:  # a flag nobody classified: refuse rather than ignore it
        raise UserError(f"--resume: {', '.join(unknown)} cannot be checked against {run_dir}/config.json")
    clashes = []
    for dest in sorted(given - OPERATIONAL, key=lambda d: list(vars(args)).index(d)):
        flag = "--" + dest.replace("_", "-")
        yours = getattr(args, dest)
        if values[dest] is None:
            clashes.append(f"{flag} does not apply to this run's objective {config.objective}")
        elif (theirs := values[dest]()) != yours:
            clashes.append(f"{flag} {_spell(yours)} (the run has {_spell(theirs)})")
    if clashes:
        raise UserError(
            f"--resume {run_dir}: {'; '.join(clashes)}. A resumed run keeps its configuration: drop "
            "these flags, or train a new run with another --out"
        )
    spec = config.data.get("spec")
    if "data" in given and not _same_data(args.data, spec):
        raise UserError(f"--resume {run_dir}: --data {args.data} (the run was trained on {spec})")


def _spell(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _same_data(given: str, spec: str | None) -> bool:
    """The same data: the same name, or paths to the same file."""
    if given == spec:
        return True
    if spec is None:
        return False
    a, b = Path(given), Path(spec)
    return a.exists() and b.exists() and a.resolve() == b.resolve()
