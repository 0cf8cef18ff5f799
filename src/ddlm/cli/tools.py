"""`ddlm report` and `ddlm export`: a run directory -> one HTML page, or a Hugging Face style folder."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig


def cmd_report(args) -> int:
    from ..report import write_report

    RunConfig.read(Path(args.run))  # a clear error for a folder that is not a run
    print(write_report(Path(args.run), Path(args.out) if args.out else None))
    return 0


def cmd_export(args) -> int:
    from ..hub import save_pretrained

    print(save_pretrained(args.run, args.folder))
    return 0


def add_parsers(sub) -> None:
    r = sub.add_parser("report", help="write one HTML page: loss curves, metric tables, plots, samples")
    r.add_argument("run", help="run directory")
    r.add_argument("--out", help="HTML file (default RUN/report.html)")
    r.set_defaults(func=cmd_report)

    x = sub.add_parser("export", help="save the model Hugging Face style: model.safetensors + config.json")
    x.add_argument("run", help="run directory")
    x.add_argument("folder", help="folder to write (upload it with `huggingface-cli upload`)")
    x.set_defaults(func=cmd_export)
