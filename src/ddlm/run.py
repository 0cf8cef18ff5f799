"""A trained run, ready to use: its configuration, objective, and network with the newest good weights."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint, CheckpointDir
from .config import RunConfig
from .errors import UserError
from .networks import Transformer
from .objectives import Objective


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    objective: Objective
    net: Transformer
    checkpoint: Checkpoint | None


def load_run(run_dir: str | Path, weights: str = "ema", device: torch.device | str = "cpu") -> LoadedRun:
    """Network with the EMA (default) or raw weights of the newest valid checkpoint, in eval mode; a run
    trained with --keep-best gives the EMA weights of its best validation bound instead (checkpoints/best.*)."""
    run_dir = Path(run_dir)
    config = RunConfig.read(run_dir)
    checkpoints = CheckpointDir(run_dir)
    ckpt = None
    if config.train.keep_best and weights == "ema":
        try:
            ckpt = checkpoints.best()
        except ValueError as e:  # killed while writing a new best: the newest checkpoint still serves
            print(f"warning: {e}; using the newest checkpoint", file=sys.stderr)
    ckpt = ckpt or checkpoints.latest()
    if ckpt is None:
        raise UserError(f"{run_dir}: no valid checkpoint in {run_dir}/checkpoints (has training started?)")
    net = Transformer(config.net)
    net.load_state_dict(ckpt.section(weights))
    net.to(device).eval()
    return LoadedRun(run_dir, config, config.build_objective(), net, ckpt)
