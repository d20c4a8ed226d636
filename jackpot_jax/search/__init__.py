"""The method: exact top-k and N:M masks, scores, sparsity plans, optimizers and the pure steps."""
