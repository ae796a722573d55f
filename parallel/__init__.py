"""Process groups, the device mesh, FSDP2 sharding, per-block compile and activation
checkpointing, DCP checkpoints with pinned staging, the sharded EMA and the global gradient norm
(installed as imdm.parallel)."""
