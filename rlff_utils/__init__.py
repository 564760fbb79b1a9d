"""rlff-esc: the logic behind the notebooks (one module per stage)."""
