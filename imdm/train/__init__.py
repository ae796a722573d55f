"""The training loop and what it keeps: optimizer schedule, EMA, checkpoints, metrics."""
