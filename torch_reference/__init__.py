"""PyTorch reference code: models in the library's key layout that parity tests build, and
the search as the authors' PyTorch code runs it (the benchmarks' baseline)."""
