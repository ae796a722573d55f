"""The training loop: micro-batches, the optimizer and its schedule, faults and stop requests,
the run directory and metrics (checkpoints and the EMA live in imdm.parallel)."""
