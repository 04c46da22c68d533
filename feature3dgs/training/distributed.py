"""Data-parallel training on torch.distributed: every rank renders its own cameras each step,
gradients are averaged with all-reduce, and every rank takes the same density-control decisions
(the statistics that drive them are reduced first; the random draws come from one shared seed),
so the models never diverge; :func:`check_replicas` asserts it cheaply.

Launch with ``torchrun --nproc-per-node N -m feature3dgs train ...`` (``--nnodes`` for several
machines): :func:`init_from_env` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT) and uses NCCL on GPUs, gloo on CPUs. Only rank 0 writes outputs.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Distributed", "DistributedError", "init_from_env", "launched_by_torchrun"]


class DistributedError(RuntimeError):
    """A collective failed (another rank stopped or crashed: ``peer_lost``), or the replicas
    diverged. After a lost peer the process group is broken: the process should exit without
    tearing it down (its transport threads may abort the interpreter's exit)."""

    def __init__(self, message: str, peer_lost: bool = False):
        super().__init__(message)
        self.peer_lost = peer_lost


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass
class Distributed:
    """This process's place in the group: rank, world size and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    broken: bool = False  # a collective failed: the group is unusable

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _collective(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as e:  # a peer closed its connection or timed out
            self.broken = True
            raise DistributedError(f"rank {self.rank} of {self.world_size}: {what} failed, another rank has "
                                   f"stopped or crashed ({' '.join(str(e).split())[:200]}); no outputs were "
                                   "written by this run after its last checkpoint", peer_lost=True) from None

    def all_reduce_sum(self, tensors: Iterable[Tensor]) -> None:
        """Sum the tensors over the ranks, in place (one coalesced all-reduce). Gradients are
        summed: each rank's loss is already divided by the global batch size."""
        tensors = [t for t in tensors if t is not None]
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._collective("a gradient all-reduce", dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """``tensor`` reduced over the ranks in place (``op``: 'sum' or 'max'); returns it."""
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        self._collective(f"an all-reduce ({op})", dist.all_reduce, tensor, op=reduce_op)
        return tensor

    def barrier(self) -> None:
        self._collective("a barrier", dist.barrier)

    def check_replicas(self, fingerprint: Tensor, step: int) -> None:
        """Raise DistributedError when the ranks' model fingerprints (small float64 vectors,
        e.g. N and the sum of the means) differ."""
        mine = fingerprint.detach().to(torch.float64).reshape(-1).to(self.device if self.backend == "nccl" else "cpu")
        low, high = mine.clone(), mine.clone()
        self.all_reduce(low.neg_(), "max")
        self.all_reduce(high, "max")
        if not torch.equal(-low, high):
            raise DistributedError(f"the model replicas diverged by step {step} (rank {self.rank}: "
                                   f"{mine.tolist()}, range over ranks {(-low).tolist()} .. {high.tolist()})")

    def shutdown(self) -> None:
        """Leave the group (not after a failed collective: a broken group is left to the exit)."""
        if dist.is_initialized() and not self.broken:
            dist.destroy_process_group()


def init_from_env(device: Optional[str] = None, timeout_s: float = 120.0) -> Optional[Distributed]:
    """Join the process group torchrun described in the environment, or None when this process
    runs alone. ``device``: None picks CUDA (cuda:LOCAL_RANK, NCCL) when available, else the CPU
    (gloo); 'cpu' forces gloo."""
    if not launched_by_torchrun():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is visible on this machine; use 'cpu'")
    backend = "nccl" if use_cuda else "gloo"
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Distributed(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)
