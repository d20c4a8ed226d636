"""Helpers for tests, benchmarks and scripts: PyTorch reference modules and tiny fixtures."""
