"""Masks that other pruning methods choose (magnitude, Wanda, SNIP, GraSP, SynFlow, random), and
their overlap with a jackpot; for decoder language models, one-shot magnitude, Wanda and
SparseGPT pruned block by block."""
