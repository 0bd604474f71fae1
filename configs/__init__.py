"""ml_collections configs: `base.py` is the one schema; mocov2, multicrop and knn override a few fields."""
