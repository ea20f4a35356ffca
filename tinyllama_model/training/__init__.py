"""Training: the loop, its config, optimizers, run state, launch, progress and sizing."""
