"""Command line: `ddlm train | sample | infill | eval | distill | bench | report | export`, one module per command.

`--json` prints exactly one JSON object on stdout; logs and progress bars go to stderr. A mistake in
the input (file, record, flag, template) prints one line naming it and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from . import bench, distill, evaluate, sample, tools, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddlm", description="Discrete diffusion language models on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parser(sub)
    sample.add_parsers(sub)
    evaluate.add_parser(sub)
    distill.add_parser(sub)
    bench.add_parser(sub)
    tools.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"ddlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddlm: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
