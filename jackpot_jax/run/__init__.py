"""Running a job: its spec and set-up, the training loop, evaluation, checkpoints and report."""
