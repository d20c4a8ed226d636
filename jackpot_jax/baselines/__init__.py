"""Masks that other pruning methods choose (magnitude, Wanda, SNIP, GraSP, SynFlow, random), and
their overlap with a jackpot."""
