"""Denoiser networks: the DiT of docs/method.md section 7 and the IMDM mask-state embedding."""
