"""Checkpoints that survive kills and never run code on load.

A checkpoint is two files in RUN/checkpoints/: `step-N.safetensors` (model, EMA, optimiser state and
RNG states as tensors) and `step-N.json` (step, optimiser hyper-parameters, trainer state and the
SHA-256 of the tensor file). Each is written to a temporary file, fsynced and renamed, the JSON
last, so a checkpoint exists only once both are complete; a truncated or corrupt newest one, or a
tensor file whose JSON never got written (killed in between), is reported and the previous good
one is used. Temporary files left by a killed save (`.step-*.tmp`) are never read, and are removed
when a run is resumed. The tensors are parsed from exactly the bytes whose SHA-256 was checked.
Nothing is unpickled, ever: a pickle under a checkpoint's name is reported as not a valid
safetensors file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .rundir import CHECKPOINTS, naming

BEST = "best"  # checkpoints/best.*: the weights of the best validation bound (--keep-best)


def atomic_write(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` whole or not at all: a temporary file, fsynced, renamed over `path`.
    On any failure (a full disk, say) the temporary file is removed and `path` is as it was; an OS
    error names `path`."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise naming(e, path) from None
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
        self.dir = Path(run_dir) / CHECKPOINTS
        self.keep = keep

    def save(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        weights = self._write(step, step, tensors, meta)
        self._prune()
        return weights

    def save_best(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        """The weights of the best validation bound so far as `best.safetensors` + `best.json`, written
        like a checkpoint (whole or absent) and never pruned."""
        return self._write(BEST, step, tensors, meta)

    def _write(self, name: int | str, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        """The tensor file, then the JSON with its SHA-256 (a checkpoint exists once both are whole)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        weights = self._path(name, ".safetensors")
        atomic_write(weights, payload)
        meta = {**meta, "step": step, "sha256": hashlib.sha256(payload).hexdigest()}
        atomic_write(self._path(name, ".json"), json.dumps(meta, indent=1).encode())
        return weights

    def best(self) -> Checkpoint | None:
        """The kept best weights, verified; None if there are none (ValueError if they are damaged)."""
        if not (self.dir / f"{BEST}.json").is_file():
            return None
        return self.load(BEST)

    def _path(self, step: int | str, suffix: str) -> Path:
        if step == BEST:
            return self.dir / f"{BEST}{suffix}"
        return self.dir / f"step-{step:08d}{suffix}"

    def steps(self) -> list[int]:
        """Every step with a checkpoint file (complete or not), ascending."""
        if not self.dir.is_dir():
            return []
        found = set()
        for p in self.dir.glob("step-*"):
            number = p.stem.split("-", 1)[1]
            if p.suffix in (".json", ".safetensors") and number.isdigit():
                found.add(int(number))
        return sorted(found)

    def _prune(self) -> None:
        """Keep the newest `keep` complete checkpoints; delete everything older (incomplete ones too)."""
        complete = [
            s for s in self.steps() if self._path(s, ".json").is_file() and self._path(s, ".safetensors").is_file()
        ]
        kept = complete[-max(self.keep, 1) :]
        if not kept:
            return
        for step in self.steps():
            if step < kept[0]:
                for suffix in (".json", ".safetensors"):  # JSON first: a half-pruned one is incomplete, not corrupt
                    self._path(step, suffix).unlink(missing_ok=True)

    def remove_orphans(self) -> list[Path]:
        """Delete the temporary files of saves that were killed; call only while nothing is saving."""
        if not self.dir.is_dir():
            return []
        orphans = sorted([*self.dir.glob(".step-*.tmp"), *self.dir.glob(f".{BEST}.*.tmp")])
        for p in orphans:
            p.unlink(missing_ok=True)
        return orphans

    def load(self, step: int | str) -> Checkpoint:
        """Load and verify one checkpoint; raises ValueError describing the corruption."""
        meta_path = self._path(step, ".json")
        weights = self._path(step, ".safetensors")
        if not meta_path.exists():
            raise ValueError(f"{weights}: has no {meta_path.name} beside it (its save was interrupted?)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{meta_path}: unreadable ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise ValueError(f"{meta_path}: not a ddlm checkpoint record (no SHA-256 of the tensor file)")
        if step != BEST and meta.get("step", step) != step:
            raise ValueError(f"{meta_path}: records step {meta.get('step')!r}, not {step}")
        try:
            payload = weights.read_bytes()
        except OSError as e:
            raise ValueError(f"{weights}: unreadable ({e})") from None
        if hashlib.sha256(payload).hexdigest() != meta["sha256"]:
            raise ValueError(f"{weights}: contents do not match the SHA-256 recorded in {meta_path.name} (truncated?)")
        try:
            tensors = load(payload)  # parse the very bytes that were verified
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{weights}: not a valid safetensors file ({e})") from None
        return Checkpoint(meta["step"] if step == BEST else step, tensors, meta)

    def latest(self, apply: Callable[[Checkpoint], None] | None = None, report: bool = True) -> Checkpoint | None:
        """The newest checkpoint that verifies (and that `apply` accepts: it raises ValueError for one it
        cannot use); newer corrupt or incomplete ones are reported on stderr and skipped."""
        for step in reversed(self.steps()):
            try:
                ckpt = self.load(step)
                if apply is not None:
                    apply(ckpt)
                return ckpt
            except ValueError as e:
                if report:
                    print(f"warning: skipping corrupt checkpoint: {e}", file=sys.stderr)
        return None
