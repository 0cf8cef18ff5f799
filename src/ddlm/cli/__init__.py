"""Command line: `ddlm train | sample | infill | eval | distill | bench | report | export`, one module per command.

`--json` prints exactly one JSON object on stdout; logs and progress bars go to stderr. A mistake in
the input (file, record, flag, template) prints one line naming it and exits with code 2, and so does
a failure of the file system (full, read-only, permission denied, a directory where a file should be):
the line names the path, what went wrong and what to do.
"""

from __future__ import annotations

import argparse
import errno
import sys

from ..errors import UserError
from . import bench, distill, evaluate, predictor, sample, tools, train
from .resume import given_flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddlm", description="Discrete diffusion language models on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parser(sub)
    sample.add_parsers(sub)
    evaluate.add_parser(sub)
    distill.add_parser(sub)
    predictor.add_parser(sub)
    bench.add_parser(sub)
    tools.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = given_flags(parser, argv)  # the flags typed, not defaulted (`train --resume` checks them)
    try:
        return args.func(args)
    except UserError as e:
        print(f"ddlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddlm: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in STORAGE_ADVICE:
            raise
        hint = args.os_error_hint(args) if hasattr(args, "os_error_hint") else "then run the command again"
        where = e.filename or getattr(args, "out", None) or "the file system"
        print(f"ddlm {args.command}: error: {where}: {STORAGE_ADVICE[e.errno]}; {hint}", file=sys.stderr)
        return 2


# What a failure of the file system means to a user, by errno: said in one line, never as a traceback.
STORAGE_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space",
    errno.EDQUOT: "disk quota exceeded: free some space or raise the quota",
    errno.EROFS: "the file system is read-only: remount it writable or choose another directory",
    errno.EACCES: "permission denied: check the owner and mode of the directory",
    errno.EPERM: "operation not permitted: check the owner and mode of the directory",
    errno.EISDIR: "a directory stands where ddlm writes a file: move it away",
    errno.ENOTDIR: "a file stands where ddlm needs a directory: move it away",
    errno.EEXIST: "a file stands where ddlm needs a directory: move it away",
    errno.ENOENT: "no such file or directory (removed while ddlm was running?)",
}


__all__ = ["build_parser", "main"]
