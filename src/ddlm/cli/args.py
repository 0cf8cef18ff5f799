"""What every command's parser shares: value types that name the flag's range, the runtime flags,
the sampling flags, deprecated spellings, and `log` for stderr."""

from __future__ import annotations

import argparse
import math
import sys

from ..guidance.resampling import SCHEMES, TRIGGERS
from ..ordering import ORDERS
from ..ordering import order_policy as order_policy  # the commands import it from here
from ..sampling import STEP_RULES


def log(msg: str) -> None:
    """One line on stderr: stdout carries only results (a table, FASTA or one JSON object)."""
    print(msg, file=sys.stderr, flush=True)


def number(kind: type, low: float, high: float, low_open: bool = False, high_open: bool = False):
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


SEED = number(int, 0, 2**32 - 1)


def length_range(text: str) -> tuple[int, int]:
    """'N' -> (N, N); 'MIN:MAX' -> (MIN, MAX), both at least 1 and MIN <= MAX."""
    parts = text.split(":")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or MIN:MAX")
    low, high = positive_int(parts[0]), positive_int(parts[-1])
    if low > high:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN {low} is greater than MAX {high}")
    return low, high


class Deprecated(argparse.Action):
    """An old spelling of a flag: it still works, as the new one, and says so on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        log(f"ddlm: {option_string} is deprecated; use {self.new}")
        setattr(namespace, self.dest, values)


def add_threshold_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=number(float, 0, 1, low_open=True),
        metavar="P",
        help="--order confidence: also commit, in the same call, every masked position whose top probability "
        "exceeds P (default 0.9); at least one per call, so a sample may take fewer calls than --steps",
    )


def add_steering_arguments(p: argparse.ArgumentParser) -> None:
    """Reward-guided particles (guidance/particles.py) and remasking; their ranges are checked where they
    are used, so the CLI and the Python API refuse the same values with the same line."""
    p.add_argument(
        "--reward",
        metavar="SPEC",
        help="steer towards a higher reward: charge, gravy, hmm:FILE, regex:PATTERN, sudoku, py:MODULE:FUNCTION "
        "or cap:VALUE:SPEC (min of SPEC's reward and VALUE)",
    )
    p.add_argument("--particles", type=int, default=1, metavar="K", help="particles per sample (1: plain sampling)")
    p.add_argument(
        "--reward-temperature",
        type=float,
        default=1.0,
        metavar="LAMBDA",
        help="target p(x) exp(r(x) / LAMBDA): smaller follows the reward harder (in the reward's units)",
    )
    p.add_argument(
        "--resample",
        choices=TRIGGERS.names(),
        default="ess",
        help="when particles are resampled: ess (when the effective sample size falls below K/2), always, never",
    )
    p.add_argument("--resampler", choices=SCHEMES.names(), default="systematic", help="how particles are resampled")
    p.add_argument(
        "--pick",
        choices=["draw", "best"],
        default="draw",
        help="the particle each sample returns: drawn from the final weights, or the highest reward "
        "(best-of-K with --resample never)",
    )
    p.add_argument(
        "--remask-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="masked runs: committed tokens return to the mask, about R for each token the schedule unmasks, "
        "so that a sampler can take back early choices (ReMDM-style; the marginals are kept)",
    )


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


def add_sampling_arguments(p: argparse.ArgumentParser, default_n: int) -> None:
    """The flags `sample` and `infill` share: how many, how (steps, rule, cache, order), where to."""
    p.add_argument("run", help="run directory")
    p.add_argument("--n", type=positive_int, default=default_n, help="number of sequences")
    p.add_argument(
        "--steps", type=positive_int, help="reverse-process steps (default 128; a distilled student's own count)"
    )
    p.add_argument("--sampler", choices=STEP_RULES.names(), default="tau-leaping")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--out", help="FASTA file to write (default: stdout)")
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"samples", "nfe", "seconds", "valid", "sequences_per_second"} (and with --reward, "rewards" '
        'and "particles") as one JSON object',
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="re-run the network at every step (for comparison: same distribution, other draws)",
    )
    p.add_argument(
        "--no-kv-cache",
        action="store_true",
        help="bd3lm: re-read the sampled prefix at every call instead of caching its keys and values "
        "(for comparison: the same samples, slower)",
    )
    p.add_argument(
        "--order",
        choices=ORDERS.names(),
        help="masked runs: commit the best-ranked positions each step (Kim et al.) instead of random",
    )
    p.add_argument(
        "--order-noise", type=number(float, 0, 1e6), default=0.0, metavar="G", help="Gumbel noise on the ranking"
    )
    add_threshold_argument(p)
    p.add_argument(
        "--temperature",
        type=number(float, 0, 100, low_open=True),
        default=1.0,
        metavar="T",
        help="masked diffusion and AR: sample each token from p^(1/T) (T < 1: likelier tokens, less novelty)",
    )
    p.add_argument(
        "--top-p",
        type=number(float, 0, 1, low_open=True),
        default=1.0,
        metavar="P",
        help="masked diffusion and AR: sample each token from its nucleus, the likeliest tokens holding mass P",
    )
    p.add_argument(
        "--remask",
        action="store_true",
        help="RDM: committed tokens that are outranked return to the mask (implies --order top-prob)",
    )
    add_steering_arguments(p)
    add_runtime_arguments(p)
