"""Fitting Gaussians to posed images: the typed config, the trainer, densification strategies,
losses, evaluation and checkpoints."""
