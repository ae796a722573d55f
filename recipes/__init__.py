"""Packaged TOML recipes (installed as imdm.recipes); load one as builtin:NAME."""
