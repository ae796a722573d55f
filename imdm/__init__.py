"""imdm: a training stack for few-step discrete diffusion language models (MDLM, IMDM and
their distillation and rectification)."""

__version__ = "0.1.0"
