"""Where a network runs and in which precision: the device, bf16 autocast, a bf16 copy for inference."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from .errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


# the instruction sets that decide which precision is fast on a CPU
VECTOR_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX"}


def cpu_vector_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of VECTOR_FLAGS the first CPU of /proc/cpuinfo (or the text `cpuinfo`) lists."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [name for flag, name in VECTOR_FLAGS.items() if flag in flags]


def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX makes bf16 matrix products about twice as fast as fp32 on a CPU."""
    return not {"AVX-512 BF16", "AMX"}.isdisjoint(cpu_vector_flags())


def bf16_is_fast(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None for fp32; bf16 autocast (fp32 master weights) where the hardware runs it fast (`auto`)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_is_fast(device) else None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """bf16 autocast on `device` when dtype is bf16; a no-op context for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def low_precision_copy(net, dtype: torch.dtype | None):
    """The network with its weights cast once to `dtype` (bf16) for inference, or itself for fp32.

    Autocast re-casts every weight at every call; with the sampler's small sub-batches that cast is a
    third of the cost of a forward pass on a CPU. The logits are returned in float32 either way.
    """
    if dtype is None:
        return net
    return copy.deepcopy(net).to(dtype)
