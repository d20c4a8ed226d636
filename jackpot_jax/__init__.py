"""jackpot_jax: Lottery Jackpots in JAX/Flax."""
