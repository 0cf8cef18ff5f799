"""`ddlm bench`: this machine's speed (see bench.py) -> a table or one JSON object."""

from __future__ import annotations

import argparse
import json

from ..bench import Progress, format_table, run_bench
from ..networks import PRESETS
from .args import add_runtime_arguments, positive_float, positive_int


def cmd_bench(args) -> int:
    say = Progress(args.quiet)
    result = run_bench(args, say)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def int_list(text: str) -> list[int]:
    """'64,128,256' -> [64, 128, 256], each at least 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more integers of at least 1, e.g. 64,128")
    return values


def add_parser(subparsers) -> None:
    """Add `bench` to the `ddlm` subcommands."""
    b = subparsers.add_parser(
        "bench",
        help="measure training and sampling speed, MFU and memory on this machine",
        description="Time the real training step and sampler (SEDD absorbing, protein-sized random data) "
        "against this machine's matrix-product peak.",
    )
    b.add_argument("--preset", choices=sorted(PRESETS), default="small", help="network size (default small)")
    add_runtime_arguments(b, quiet_help="no progress lines on stderr")
    b.add_argument("--batch-size", type=positive_int, default=32, help="training batch (default 32)")
    b.add_argument("--length", type=positive_int, default=129, help="positions per sequence (default 129)")
    b.add_argument("--sequences", type=positive_int, default=16, help="sequences sampled per run (default 16)")
    b.add_argument(
        "--seconds", type=positive_float, default=10.0, help="measuring time per matmul peak and for training (10)"
    )
    b.add_argument(
        "--compile",
        action="store_true",
        help="time ddlm's training step compiled, as `ddlm train --compile` runs it (the reference stays eager)",
    )
    b.add_argument("--scaling", action="store_true", help="also cost against sequence length and batch size")
    b.add_argument(
        "--scaling-lengths",
        type=int_list,
        default=[64, 128, 256, 512, 1024],
        metavar="L,L,...",
        help="--scaling: sequence lengths (default 64,128,256,512,1024)",
    )
    b.add_argument(
        "--scaling-batches",
        type=int_list,
        default=[1, 4, 16, 64],
        metavar="B,B,...",
        help="--scaling: batch sizes at --length (default 1,4,16,64)",
    )
    b.add_argument("--scaling-seconds", type=positive_float, default=1.5, help="training time per scaling point (1.5)")
    b.add_argument("--scaling-steps", type=positive_int, default=128, help="sampling steps per scaling point (128)")
    b.add_argument("--plot", metavar="PNG", help="where --scaling draws its plot (default bench_scaling.png)")
    b.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    b.set_defaults(func=cmd_bench)
