"""Process groups, device placement and data-parallel gradient reduction (installed as imdm.parallel)."""
