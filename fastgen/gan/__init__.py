"""GANs: losses, regularizers (gradient penalty, R1/R2, lazy regularization, spectral norm), the trainer, metrics."""
