"""Denoiser networks: the DiT of SPEC section 7 and the IMDM mask-state embedding."""
