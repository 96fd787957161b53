"""The flare classifier and the synthetic-augmentation experiment."""

from solar_ddpm_jax.classifier.train import (
    features,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)

__all__ = ["features", "load_classifier", "predict", "save_classifier", "train_classifier"]
