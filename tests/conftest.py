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


# Tiny, quiet defaults for every training run of the tests; a keyword given to `train_argv` replaces one.
TINY = {"preset": "tiny", "quiet": True}
# A protein run on the synthetic family: the defaults most CLI tests share.
FAMILY_RUN = {"max_len": 48, "batch_size": 16}


def train_argv(data, out, **flags) -> list[str]:
    """argv of `ddlm train --data DATA --out OUT`, then the TINY defaults and each keyword as a flag:
    underscores become dashes, True is a bare flag, None and False leave the flag out."""
    argv = ["train", "--data", str(data), "--out", str(out)]
    for name, value in {**TINY, **flags}.items():
        if value is None or value is False:
            continue
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


@pytest.fixture(scope="session")
def make_run(tmp_path_factory, family):
    """make_run(data=None, **flags) -> the directory of a run trained in-process by `ddlm train` with
    train_argv's defaults (data: the synthetic family)."""
    from ddlm.cli import main

    def make(data=None, **flags) -> Path:
        out = tmp_path_factory.mktemp("runs") / "run"
        assert main(train_argv(family if data is None else data, out, **flags)) == 0
        return out

    return make


@pytest.fixture(scope="session")
def tiny_run(make_run) -> Path:
    """A tiny model trained for a few steps on the synthetic family (shared by the CLI tests)."""
    return make_run(steps=40, eval_every=20, checkpoint_every=20, samples=2, **FAMILY_RUN)


def make_trainer(run: Path, family: Path, **cfg):
    """A Trainer of a tiny SEDD network on the synthetic family, fp32, with TrainConfig fields `cfg`."""
    import torch

    from ddlm.config import RunConfig, TrainConfig
    from ddlm.data.proteins import load_proteins
    from ddlm.networks import NetConfig, Transformer
    from ddlm.train import Trainer

    data = load_proteins(str(family), 48)
    vocab = data.tokenizer.vocab_size
    config = RunConfig(data={}, vocab_size=vocab, schedule={"name": "loglinear", "eps": 1e-3})
    objective = config.build_objective()
    vocab_in, vocab_out = objective.net_vocab
    torch.manual_seed(0)
    net = Transformer(NetConfig(vocab_in, vocab_out, max_len=50, d_model=32, n_layers=2, n_heads=2))
    settings = dict(batch_size=16, log_every=1, eval_every=1000, checkpoint_every=1000, precision="fp32", **cfg)
    return Trainer(
        run,
        objective,
        net,
        data.train,
        data.heldout,
        data.tokenizer.real_tokens,
        TrainConfig(**settings),
        torch.device("cpu"),
    )


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
