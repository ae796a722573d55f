"""Evaluation: sampling-based metrics of trained runs."""
