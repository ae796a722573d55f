"""Reverse samplers: the ancestral sampler with seeded or eps-driven draws and greedy removal."""
