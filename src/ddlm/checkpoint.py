"""Checkpoints that survive kills and never run code on load.

A checkpoint is two files in RUN/checkpoints/: `step-N.safetensors` (model, EMA, optimiser state and
RNG states as tensors) and `step-N.json` (step, optimiser hyper-parameters, trainer state and the
SHA-256 of the tensor file). Each is written to a temporary file, fsynced and renamed, the JSON
last, so a checkpoint exists only once both are complete; a truncated or corrupt newest one is
reported and the previous good one is used. Nothing is unpickled, ever.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import UserError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


@dataclass
class Checkpoint:
    step: int
    tensors: dict[str, torch.Tensor]
    meta: dict

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON-able hyper-parameters."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    state: dict = {}
    for name, value in ckpt.section("optim").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in ckpt.meta["optimizer"]["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": ckpt.meta["optimizer"]["param_groups"]})


class CheckpointDir:
    def __init__(self, run_dir: Path, keep: int = 3):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        weights = self.dir / f"step-{step:08d}.safetensors"
        atomic_write(weights, payload)
        meta = {**meta, "step": step, "sha256": hashlib.sha256(payload).hexdigest()}
        atomic_write(self.dir / f"step-{step:08d}.json", json.dumps(meta, indent=1).encode())
        self._prune()
        return weights

    def steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("step-*.json") if p.stem.split("-")[1].isdigit())

    def _prune(self) -> None:
        for step in self.steps()[: -self.keep]:
            for suffix in (".json", ".safetensors"):
                (self.dir / f"step-{step:08d}{suffix}").unlink(missing_ok=True)

    def load(self, step: int) -> Checkpoint:
        """Load and verify one checkpoint; raises ValueError describing the corruption."""
        meta_path = self.dir / f"step-{step:08d}.json"
        weights = self.dir / f"step-{step:08d}.safetensors"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{meta_path}: unreadable ({e})") from None
        try:
            payload = weights.read_bytes()
        except OSError as e:
            raise ValueError(f"{weights}: unreadable ({e})") from None
        if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            raise ValueError(f"{weights}: contents do not match the SHA-256 recorded in {meta_path.name} (truncated?)")
        try:
            tensors = load_file(weights)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{weights}: not a valid safetensors file ({e})") from None
        return Checkpoint(step, tensors, meta)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupt newer ones are reported on stderr and skipped."""
        for step in reversed(self.steps()):
            try:
                return self.load(step)
            except ValueError as e:
                print(f"warning: skipping corrupt checkpoint: {e}", file=sys.stderr)
        return None


def require_run_dir(run_dir: Path) -> None:
    """A run directory must hold a ddlm config; pickled checkpoints from elsewhere are refused, not loaded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory (create one with `ddlm train --out {run_dir}`)")
    if not (run_dir / "config.json").is_file():
        pickles = [p.name for p in run_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UserError(
                f"{run_dir}: holds {', '.join(pickles)}, which would need pickle to load; ddlm never unpickles "
                "(it could run arbitrary code). Convert the weights to safetensors with a ddlm config.json."
            )
        raise UserError(f"{run_dir}: not a ddlm run directory (no config.json)")
