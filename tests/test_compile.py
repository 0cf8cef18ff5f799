"""`--compile`: the training step through torch.compile computes the loss and the update of the eager step.

Compiling takes tens of seconds even for the tiny network, so each test compiles once.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILY_RUN, make_trainer, train_argv

from ddlm.cli import main


def steps(trainer, n: int) -> list[float]:
    """n optimiser steps as fit() takes them; the nats of each step's batch."""
    out = []
    for _ in range(n):
        out.append(trainer.train_step()["nats"])
        trainer.step += 1
    return out


def test_compiled_step_matches_eager(tmp_path, family):
    """Same seed, same batches and noise, no dropout: the compiled trainer's losses and weights after three
    steps agree with the eager trainer's to float32 rounding; and the compiled graph did run."""
    torch._dynamo.reset()
    eager = make_trainer(tmp_path / "eager", family)
    compiled = make_trainer(tmp_path / "compiled", family, compile=True)
    assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.model is not compiled.net and eager.model is eager.net
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    nats_eager, nats_compiled = steps(eager, 3), steps(compiled, 3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before  # dynamo compiled the network
    assert nats_compiled == pytest.approx(nats_eager, rel=1e-4)
    for (name, a), b in zip(eager.net.state_dict().items(), compiled.net.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    # the checkpoints are the plain module's: the same names as an eager run's
    assert list(compiled.net.state_dict()) == list(eager.net.state_dict())


def test_train_compile_flag_is_recorded_and_resumable(tmp_path, family, capsys):
    run = tmp_path / "run"
    assert main(train_argv(family, run, steps=2, samples=0, compile=True, precision="fp32", **FAMILY_RUN)) == 0
    assert "compiled" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
    # a session's choice, like --precision: kept on --resume, dropped with --no-compile
    resume = train_argv(family, run, steps=3, samples=0, resume=True, **FAMILY_RUN)
    assert main([*resume, "--no-compile"]) == 0
    assert "compiled" not in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True  # the run's record stands
