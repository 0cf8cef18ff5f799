"""A run directory: its config, and the objective and network built from it.

RUN/config.json        what was trained (data, tokenizer, objective, process, schedule, network, training)
RUN/checkpoints/       step-N.safetensors + step-N.json (see checkpoint.py)
RUN/heldout.fa|...     the held-out split, so evaluation uses the same records
RUN/metrics.jsonl      one JSON object per log line; RUN/loss.png the curves
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .block_diffusion import BlockDiffusion
from .checkpoint import Checkpoint, CheckpointDir, require_run_dir
from .errors import UserError
from .networks import NetConfig, Transformer
from .objectives import OBJECTIVES as CORE_OBJECTIVES
from .objectives import Objective
from .processes import PROCESSES
from .schedules import schedule_from_config

# Every objective by its --objective name. Block diffusion lives in its own module (it builds on MDLM
# and on the sampler), so it joins the registry here rather than in objectives.py.
OBJECTIVES: dict[str, type[Objective]] = {**CORE_OBJECTIVES, BlockDiffusion.name: BlockDiffusion}


def build_objective(config: dict) -> Objective:
    V = config["vocab_size"]
    process = PROCESSES[config["process"]](V)
    options = config.get("objective_options", {})
    return OBJECTIVES[config["objective"]](process, schedule_from_config(config["schedule"]), **options)


def build_net(config: dict) -> Transformer:
    return Transformer(NetConfig(**config["net"]))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX makes bf16 matrix products about twice as fast as fp32 on a CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None for fp32; bf16 autocast (fp32 master weights) where the hardware runs it fast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_supports_bf16() else None


@dataclass
class LoadedRun:
    run_dir: Path
    config: dict
    objective: Objective
    net: Transformer
    checkpoint: Checkpoint


def read_config(run_dir: Path) -> dict:
    require_run_dir(run_dir)
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())
    except ValueError as e:
        raise UserError(f"{run_dir}/config.json: not valid JSON ({e})") from None


def write_config(run_dir: Path, config: dict) -> None:
    path = Path(run_dir) / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, path)


def load_run(run_dir: str | Path, weights: str = "ema", device: torch.device | str = "cpu") -> LoadedRun:
    """Network with the EMA (default) or raw weights of the newest valid checkpoint, in eval mode."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    ckpt = CheckpointDir(run_dir).latest()
    if ckpt is None:
        raise UserError(f"{run_dir}: no valid checkpoint in {run_dir}/checkpoints (has training started?)")
    net = build_net(config)
    net.load_state_dict(ckpt.section(weights))
    net.to(device).eval()
    return LoadedRun(run_dir, config, build_objective(config), net, ckpt)
