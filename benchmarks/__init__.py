"""Benchmarks that write JSON results (device, versions, config, metrics) under benchmarks/results/."""
