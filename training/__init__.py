"""Training: the loop, the run folder, checkpoints (saving and loading), parallel wrapping and tracking."""
