import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def family_fasta(path: Path, n: int = 300, length: int = 40, seed: int = 0) -> Path:
    """A synthetic protein family: an ancestor mutated at 10% of positions, lengths varying by a few residues."""
    rng = random.Random(seed)
    ancestor = "M" + "".join(rng.choice(AMINO) for _ in range(length - 1))
    with open(path, "w") as f:
        for i in range(n):
            seq = "".join(rng.choice(AMINO) if rng.random() < 0.1 and k > 0 else c for k, c in enumerate(ancestor))
            seq = seq[: length - rng.randint(0, 5)]
            f.write(f">seq{i}\n{seq}\n")
    return path


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> Path:
    return family_fasta(tmp_path_factory.mktemp("data") / "family.fa")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, family) -> Path:
    """A tiny model trained for a few steps on the synthetic family (shared by the CLI tests)."""
    from ddlm.cli import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(
        [
            "train",
            "--data",
            str(family),
            "--out",
            str(run),
            "--preset",
            "tiny",
            "--steps",
            "40",
            "--max-len",
            "48",
            "--eval-every",
            "20",
            "--checkpoint-every",
            "20",
            "--samples",
            "2",
            "--quiet",
            "--batch-size",
            "16",
        ]
    )
    assert code == 0
    return run


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m ddlm` in a subprocess: exit codes and stderr exactly as a user sees them."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ddlm", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def json_out(capsys, argv: list[str]) -> dict:
    """Run the CLI in-process: it must succeed and print exactly one JSON object on stdout."""
    from ddlm.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 1  # exactly one JSON object on stdout
    return json.loads(captured.out)
