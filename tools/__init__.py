"""Command-line tools (installed as imdm.tools)."""
