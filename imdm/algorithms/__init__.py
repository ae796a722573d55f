"""Training algorithms: each one object with a loss for a batch and a denoiser for sampling."""
