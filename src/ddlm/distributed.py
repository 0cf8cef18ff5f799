"""Data-parallel training over several processes (torchrun): the process group, ranks and row shards.

`torchrun --nproc_per_node N -m ddlm train ...` starts N copies of `ddlm train`, each with the
environment variables WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `session` reads
them, joins the process group (NCCL on CUDA, each process on the GPU `cuda:LOCAL_RANK`; gloo on
the CPU) and leaves it at the end. Without them (plain `ddlm train`) it is a single process with
no process group at all, and training is exactly what it always was.

How the work is split, so that N processes train the same model as one process would:

* Data: every rank computes the same *global* batch of `--batch-size` records for a step (the
  deterministic `TensorBatches` / `batch_indices` of the run's seed, or the endless stream) and
  keeps its own contiguous slice of `batch_size / world_size` rows (`World.rows`). This is what a
  DistributedSampler does, but the records a step sees are still a pure function of (seed, step),
  so a resumed run, or one resumed with another number of processes, sees exactly the same data.
* Noise: the objective draws its noise (times, masks) for the whole global batch from the one noise
  generator, which has the same seed and the same state on every rank; the network runs only on
  the rank's rows (`LocalRows`). The loss of a rank's rows is therefore exactly the single-process
  loss of those rows, and the gradient that DistributedDataParallel averages is the single-process
  gradient up to the order of floating-point sums. The price is that the objective's element-wise
  arithmetic on the network output runs on the global batch on every rank (cheap next to the
  transformer, which runs on the local rows only).
* Dropout draws from the global torch RNG, seeded per rank (seed + rank); every rank's state is
  saved in the checkpoint.
* Only rank 0 writes (config, split, checkpoints, metrics, plots) and prints; every rank loads the
  same checkpoint on `--resume`. The run directory must therefore be on a file system that every
  node sees (for several nodes: a shared file system).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .device import pick_device
from .errors import UserError

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass
class World:
    """This process's place among the training processes; the default is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of `batch_size` rows."""
        if batch_size % self.size:
            raise UserError(
                f"--batch-size {batch_size} does not divide evenly among {self.size} processes; "
                f"use a multiple of {self.size}"
            )
        per_rank = batch_size // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    # --- collectives (no-ops for a single process) ------------------------------------------------
    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a small float64 tensor, returned on the CPU."""
        if not self.distributed:
            return values
        t = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: is it set on at least one rank? Every rank gets the same answer."""
        if not self.distributed:
            return list(flags)
        total = self.sum(torch.tensor([float(f) for f in flags], dtype=torch.float64))
        return [bool(v > 0) for v in total]

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a tensor of the same shape and dtype, in rank order, on the CPU."""
        if not self.distributed:
            return [tensor]
        local = tensor.detach().to(self.device).contiguous()
        out = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(out, local)
        return [t.cpu() for t in out]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from the torchrun environment, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    values = {}
    for name in ENV_VARS:
        text = os.environ.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise UserError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None
    size, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size or local < 0:
        raise UserError(f"inconsistent torchrun environment: WORLD_SIZE={size}, RANK={rank}, LOCAL_RANK={local}")
    return rank, size, local


@contextmanager
def session(device_name: str = "auto") -> Iterator[World]:
    """The World of this process: joins the process group under torchrun (and leaves it on exit)."""
    env = env_world()
    if env is None or env[1] == 1:
        yield World(device=pick_device(device_name))
        return
    rank, size, local = env
    device = pick_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(
                f"--device {device_name}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local}, but this node has {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"--device {device_name}: distributed training runs on cuda or cpu")
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run without torchrun")
    dist.init_process_group(backend, rank=rank, world_size=size)
    try:
        yield World(rank=rank, size=size, local_rank=local, device=device)
    finally:
        dist.destroy_process_group()


class LocalRows:
    """`net` evaluated on this rank's rows of a global batch; the other rows of the output are zeros.

    An objective called with this in place of the network draws its noise for the whole global batch
    (the same draws on every rank), while the network (wrapped in DistributedDataParallel) runs and
    back-propagates on `rows` only. Only the per-sequence losses of `rows` are meaningful; the caller
    keeps those (every objective's loss of a row depends on the network output of that row alone).
    """

    def __init__(self, net, rows: slice):
        self.net, self.rows = net, rows

    def __call__(self, x: torch.Tensor, sbar: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        # kwargs (attention mask, position ids) are the same for every row, but for a per-row estimate
        if kwargs.get("x0_estimate") is not None:
            kwargs["x0_estimate"] = kwargs["x0_estimate"][self.rows]
        out = self.net(x[self.rows], None if sbar is None else sbar[self.rows], **kwargs)
        B = x.shape[0]
        before = out.new_zeros((self.rows.start, *out.shape[1:]))
        after = out.new_zeros((B - self.rows.stop, *out.shape[1:]))
        return torch.cat([before, out, after])
