"""Diffusion math: noise schedules, training times, the forward process, SUBS, the NELBO and
the reverse-step posteriors."""
