"""The device mesh: data parallelism as replicate x shard (HSDP: replicas across nodes, FSDP2
shards within), built from the recipe and the launcher's world size."""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


def data_parallel_mesh(device_type: str, world_size: int, replicate: int) -> DeviceMesh:
    """A 1-D ('shard',) mesh for FSDP, or a 2-D ('replicate', 'shard') mesh for HSDP."""
    if world_size % replicate != 0:
        raise ValueError(f"parallelism.replicate = {replicate} does not divide the world size {world_size}")
    if replicate == 1:
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
    return init_device_mesh(device_type, (replicate, world_size // replicate), mesh_dim_names=("replicate", "shard"))
