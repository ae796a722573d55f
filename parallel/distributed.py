"""Process-group setup from the launcher's environment (torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK); a single process needs no launcher."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imdm.devices import pick_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launcher_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_preference: str) -> DistInfo:
    """Join the process group when launched with several ranks (NCCL on GPU, gloo on CPU)."""
    world = launcher_world_size()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=_attempt_store(world, rank),
                                rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device)


def _attempt_store(world: int, rank: int) -> dist.Store:
    """The launcher's store under a prefix unique to this restart attempt, so that processes
    restarted by torchrun never read addresses their predecessors published."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    hosted_by_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True"
    store = dist.TCPStore(host, port, world, is_master=rank == 0 and not hosted_by_agent, wait_for_workers=False)
    return dist.PrefixStore(f"imdm/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """In-place maximum over ranks (no-op in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def checkpoint_group(info: DistInfo):
    """A gloo group for DCP's background saves when ranks talk NCCL (None: use the default group)."""
    if dist.is_initialized() and dist.get_world_size() > 1 and info.device.type == "cuda":
        return dist.new_group(backend="gloo")
    return None


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
