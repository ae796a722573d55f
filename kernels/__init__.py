"""Triton kernels, each beside its eager PyTorch reference and registered as a custom op (installed as imdm.kernels)."""
