"""solar_ddpm_jax: class-conditional diffusion models of SDO/AIA images by GOES flare class."""

__version__ = "0.1.0"

FLARE_CLASSES = ("A", "B", "C", "M", "X")  # Index i is label i; label len(FLARE_CLASSES) is null.
