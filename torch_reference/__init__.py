"""PyTorch reference code: models in the library's key layout that parity tests build, and
the search as the authors' PyTorch code runs it (the benchmarks' baseline), and the tiny
search job the tests and a benchmark run (`tiny_job`)."""
