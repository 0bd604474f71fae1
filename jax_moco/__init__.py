"""jax_moco: MoCo-v2 and kNN-MoCo (Van Gansbeke et al., 2021) in JAX/Flax."""
