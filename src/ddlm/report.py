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

from .train import plot_losses


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _read_fasta_loose(path: Path) -> list[str]:
    seqs, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if current is not None:
                seqs.append(current)
            current = ""
        elif current is not None:
            current += line.strip()
    if current is not None:
        seqs.append(current)
    return seqs


def composition_plot(samples: list[str], natural: list[str]):
    import matplotlib.pyplot as plt
    import numpy as np

    from .data.proteins import AMINO_ACIDS

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.2))
    x = np.arange(len(AMINO_ACIDS))
    for k, (name, seqs) in enumerate([("samples", samples), ("held-out natural", natural)]):
        text = "".join(seqs)
        freq = np.array([text.count(a) for a in AMINO_ACIDS], dtype=float) / max(len(text), 1)
        ax1.bar(x + (k - 0.5) * 0.4, freq, width=0.4, label=name)
        ax2.hist([len(s) for s in seqs], bins=30, alpha=0.6, density=True, label=name)
    ax1.set_xticks(x, list(AMINO_ACIDS))
    ax1.set_title("amino-acid composition")
    ax1.legend()
    ax2.set_title("length")
    ax2.legend()
    return fig


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = out or run_dir / "report.html"
    config = json.loads((run_dir / "config.json").read_text())
    parts = [f"<h1>ddlm run <code>{html.escape(str(run_dir))}</code></h1>"]
    net = config["net"]
    parts.append(
        _table(
            [
                [
                    config["data"]["spec"],
                    config["objective"],
                    config["process"],
                    config.get("preset"),
                    f"d={net['d_model']}, {net['n_layers']} layers, {net['n_heads']} heads",
                    net["time_conditioning"],
                ]
            ],
            ["data", "objective", "process", "preset", "network", "time conditioning"],
        )
    )
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        plot_losses(metrics, run_dir / "loss.png")
        encoded = base64.b64encode((run_dir / "loss.png").read_bytes()).decode()
        parts.append(f'<h2>Loss</h2><img src="data:image/png;base64,{encoded}">')
    for name, title in [("eval.json", "Held-out likelihood"), ("protein_metrics.json", "Protein metrics")]:
        path = run_dir / name
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        parts.append(f"<h2>{title}</h2>")
        if name == "protein_metrics.json":
            rows_names = [k for k in ("samples", "natural", "shuffled") if k in result]
            keys = [k for k, v in result[rows_names[0]].items() if isinstance(v, int | float)]
            parts.append(_table([[k, *[result[r].get(k) for r in rows_names]] for k in keys], ["metric", *rows_names]))
            parts.append(f"<p>settings: <code>{html.escape(json.dumps(result.get('settings', {})))}</code></p>")
        else:
            parts.append(
                _table([[k, v] for k, v in result.items() if not isinstance(v, dict | list)], ["quantity", "value"])
            )
    samples_path = next((p for p in (run_dir / "samples.fasta", run_dir / "samples.txt") if p.is_file()), None)
    if samples_path is not None:
        if samples_path.suffix == ".fasta":
            samples = _read_fasta_loose(samples_path)
            natural = _read_fasta_loose(run_dir / "heldout.fa") if (run_dir / "heldout.fa").is_file() else []
            if samples and natural:
                fig = composition_plot(samples, natural)
                parts.append("<h2>Samples against held-out natural sequences</h2>" + _png(fig))
                plt.close(fig)
            parts.append("<h2>Samples</h2><pre>" + html.escape("\n".join(samples[:50])) + "</pre>")
        else:
            parts.append("<h2>Samples</h2><pre>" + html.escape(samples_path.read_text()[:20000]) + "</pre>")
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
