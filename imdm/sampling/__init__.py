"""Reverse samplers and exact categorical sampling."""
