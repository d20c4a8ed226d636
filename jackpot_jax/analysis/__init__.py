"""Analyses of searched jackpots: pruning-criterion masks and their overlap with the jackpot."""
