"""ml_collections configs: `base.py` is the one schema; `presets.py` the variants and presets as tables."""
