"""The processes of a ``torchrun`` launch, for whatever they share out (training batches, evaluation blocks,
pictures to extract): join the process group, know this process's rank and device, wait and gather.

One process (no ``WORLD_SIZE`` > 1) is the same code with a world of one.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from itmatch.errors import ItmatchError


@dataclasses.dataclass
class DistInfo:
    """This process's place: ``rank`` of ``world_size``, its ``device``, and the group for the batch gathers."""

    rank: int
    world_size: int
    device: torch.device
    group: Any = None
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (a one-element list in a single process)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, rows: np.ndarray) -> np.ndarray | None:
        """Every process's ``rows`` (n_r, ...) float32 concatenated in rank order on rank 0 (None elsewhere).

        The pieces may differ in length; they travel as tensors on this process's device (NCCL needs a GPU).
        """
        if self.world_size == 1:
            return rows
        lengths = self.all_gather_object(len(rows))
        padded = torch.zeros((max(lengths), *rows.shape[1:]), dtype=torch.float32, device=self.device)
        padded[: len(rows)] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        parts = [torch.empty_like(padded) for _ in lengths] if self.is_main else None
        dist.gather(padded, parts, dst=0)
        if parts is None:
            return None
        return np.concatenate([part[:n].cpu().numpy() for part, n in zip(parts, lengths)])

    def close(self) -> None:
        if self.owns_process_group:
            dist.destroy_process_group()


def launch_rank() -> int:
    """This process's rank as ``torchrun`` sets it (0 outside ``torchrun``), readable before any process group."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``/``cuda``/``cuda:N`` (default: cuda when available) with a clear error when it is missing."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ItmatchError(f"--device {str(device)!r}: use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ItmatchError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def setup(device: str | None = "auto", timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), else run as one process.

    ``device``: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; under ``torchrun`` a GPU
    run uses ``cuda:LOCAL_RANK``. GPUs communicate with NCCL, CPUs with gloo. ``timeout``: how long a collective
    may wait for the other processes (default torch's, 10 to 30 minutes): longer where a process that finished
    its share waits for the slowest one.
    """
    dev = resolve_device(None if device == "auto" else device)
    use_cuda = dev.type == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(0, 1, dev)
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev, dist.new_group(), owns)
