"""vae-search: hyperparameter search for a convolutional VAE on CIFAR-10 with Optuna."""

__version__ = "0.1.0"
