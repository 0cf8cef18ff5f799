"""An objective's own `ddlm train` flag, declared beside the objective that takes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """A constructor keyword of the objectives that list it, set by a `ddlm train` flag: an int or float
    in [low, high], one of `choices` (str), a switch (bool), or text that `parse` checks (it raises
    argparse.ArgumentTypeError; the config keeps the text). A `default` of None is settled by the
    objective for the run (`Objective.settle_options`), and `default_help` says how."""

    keyword: str
    flag: str
    kind: type
    default: Any
    help: str
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    default_help: str | None = None
    parse: Callable[[str], Any] | None = None
