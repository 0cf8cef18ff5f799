"""One HTML page per run: what was trained, how the loss went, what the model's samples look like.

Everything is read from the run directory (config, metrics, eval results that `ddlm eval` saved,
samples); plots are embedded as PNG so the page is a single file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .config import RunConfig
from .data.fasta import read_records
from .plots import composition_plot, plot_losses
from .rundir import EVAL, HELDOUT_FASTA, LOSS_PLOT, METRICS, PROTEIN_METRICS, REPORT, SAMPLES


def _png(fig) -> str:
    """The figure as an inline image; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    run_dir = Path(run_dir)
    config = RunConfig.read(run_dir)
    out = out or run_dir / REPORT
    parts = [
        f"<h1>ddlm run <code>{html.escape(str(run_dir))}</code></h1>",
        _config_table(config),
        *_loss_section(run_dir),
        *_results_sections(run_dir),
        *_samples_section(run_dir),
    ]
    for gif in sorted(run_dir.glob("*.gif")):
        encoded = base64.b64encode(gif.read_bytes()).decode()
        parts.append(f'<h2>Denoising: {html.escape(gif.name)}</h2><img src="data:image/gif;base64,{encoded}">')
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}pre{font-size:11px;overflow-x:auto}"
    )
    out.write_text(
        f"<!doctype html><meta charset=utf-8><title>ddlm report</title><style>{style}</style>" + "\n".join(parts)
    )
    return out


def _config_table(config: RunConfig) -> str:
    net = config.net
    row = [
        config.data["spec"],
        config.objective,
        config.process,
        config.preset,
        f"d={net.d_model}, {net.n_layers} layers, {net.n_heads} heads",
        net.time_conditioning,
    ]
    return _table([row], ["data", "objective", "process", "preset", "network", "time conditioning"])


def _loss_section(run_dir: Path) -> list[str]:
    if not (run_dir / METRICS).is_file():
        return []
    plot_losses(run_dir / METRICS, run_dir / LOSS_PLOT)
    encoded = base64.b64encode((run_dir / LOSS_PLOT).read_bytes()).decode()
    return [f'<h2>Loss</h2><img src="data:image/png;base64,{encoded}">']


def _results_sections(run_dir: Path) -> list[str]:
    """What `ddlm eval` saved: the held-out bound, and the protein metrics as a table of rows."""
    parts = []
    if (run_dir / EVAL).is_file():
        result = json.loads((run_dir / EVAL).read_text())
        rows = [[k, v] for k, v in result.items() if not isinstance(v, dict | list)]
        parts += ["<h2>Held-out likelihood</h2>", _table(rows, ["quantity", "value"])]
    if (run_dir / PROTEIN_METRICS).is_file():
        result = json.loads((run_dir / PROTEIN_METRICS).read_text())
        names = [k for k in ("samples", "natural", "shuffled") if k in result]
        keys = [k for k, v in result[names[0]].items() if isinstance(v, int | float)]
        parts += [
            "<h2>Protein metrics</h2>",
            _table([[k, *[result[r].get(k) for r in names]] for k in keys], ["metric", *names]),
        ]
        parts.append(f"<p>settings: <code>{html.escape(json.dumps(result.get('settings', {})))}</code></p>")
    return parts


def _samples_section(run_dir: Path) -> list[str]:
    fasta, text = run_dir / f"{SAMPLES}.fasta", run_dir / f"{SAMPLES}.txt"
    if text.is_file():
        return ["<h2>Samples</h2><pre>" + html.escape(text.read_text()[:20000]) + "</pre>"]
    if not fasta.is_file():
        return []
    samples = read_records(fasta)
    natural = read_records(run_dir / HELDOUT_FASTA) if (run_dir / HELDOUT_FASTA).is_file() else []
    parts = []
    if samples and natural:
        parts.append("<h2>Samples against held-out natural sequences</h2>" + _png(composition_plot(samples, natural)))
    return [*parts, "<h2>Samples</h2><pre>" + html.escape("\n".join(samples[:50])) + "</pre>"]
