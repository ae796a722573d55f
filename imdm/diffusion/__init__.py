"""Diffusion math: noise schedules, training times, the forward process, SUBS, the NELBO, the
reverse-step posteriors and exact float64 categorical draws."""
