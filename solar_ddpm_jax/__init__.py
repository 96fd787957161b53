"""solar_ddpm_jax: class-conditional diffusion models of SDO/AIA images by GOES flare class."""

__version__ = "0.1.0"

FLARE_CLASSES = ("A", "B", "C", "M", "X")  # Index i is label i; label len(FLARE_CLASSES) is null.


def labels_outside(labels, num_classes: int) -> list[int]:
  """The distinct labels of an integer array that are not classes 0..num_classes-1, sorted."""
  import numpy as np
  labels = np.asarray(labels)
  return sorted(set(labels[(labels < 0) | (labels >= num_classes)].tolist()))
