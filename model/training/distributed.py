"""Several processes, one model: DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node=N -m model.cli train ...`` starts N copies of the command; each
joins the job through :func:`distributed` (``init_process_group(init_method="env://")``:
torchrun's own variables, read by torch), with the ``gloo`` backend on CPUs and ``nccl`` on
CUDA devices (one device per process: the node-local rank). Outside torchrun the context is
the single process (rank 0 of 1) and every helper here is a no-op.

What the ranks share is decided in :mod:`model.training.batches` (each rank draws its own
part of every global batch) and :class:`model.training.trainer.Trainer` (gradients averaged by
DDP, validation cases divided among the ranks, only rank 0 writes files and shows progress).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from model.errors import ConfigurationError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, number of processes, device index, backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "": one process, no process group

    @property
    def enabled(self) -> bool:
        """Whether a process group is in use (collectives are real)."""
        return bool(self.backend)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and the progress bar."""
        return self.rank == 0


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (torch elastic)."""
    return dist.is_available() and dist.is_torchelastic_launched()


@contextmanager
def distributed(device: torch.device, required: bool = False) -> Iterator[DistContext]:
    """Join the ``torchrun`` job of this process for the duration of the block.

    Outside torchrun: the single-process context, or, with ``required`` (``--ddp``), an error.
    On CUDA every process takes the device of its node-local rank.

    Raises
    ------
    ConfigurationError
        ``required`` outside torchrun, or more processes on a node than CUDA devices.
    """
    if not launched_by_torchrun():
        if required:
            raise ConfigurationError(
                "--ddp: start the command with torchrun, e.g. "
                "torchrun --nproc_per_node=2 -m model.cli train ..."
            )
        yield SINGLE
        return
    if dist.is_initialized():  # someone else owns the group: use it, leave it open
        yield _context(str(dist.get_backend()))
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://")
    try:
        ctx = _context(backend)
        if backend == "nccl":
            if ctx.local_rank >= torch.cuda.device_count():
                raise ConfigurationError(
                    f"process {ctx.local_rank} of this node has no CUDA device "
                    f"({torch.cuda.device_count()} visible): start fewer processes per node"
                )
            torch.cuda.set_device(ctx.local_rank)
        if ctx.is_main:
            log.info("distributed training: %d processes, %s", ctx.world_size, backend)
        yield ctx
    finally:
        dist.destroy_process_group()


def _context(backend: str) -> DistContext:
    rank = dist.get_rank()
    return DistContext(
        rank=rank,
        world_size=dist.get_world_size(),
        local_rank=dist.get_node_local_rank(fallback_rank=rank),
        backend=backend,
    )


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """The device this rank computes on: its own CUDA device under nccl, else ``device``."""
    if ctx.backend == "nccl":
        return torch.device("cuda", ctx.local_rank)
    return device


def all_reduce_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (``values`` itself in one process)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def broadcast_object(ctx: DistContext, value: T) -> T:
    """Rank 0's ``value`` on every rank (picklable objects)."""
    if not ctx.enabled:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    received: T = box[0]
    return received


def barrier(ctx: DistContext) -> None:
    """Wait until every rank is here."""
    if ctx.enabled:
        dist.barrier()
