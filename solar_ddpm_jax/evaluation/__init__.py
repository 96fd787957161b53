"""Feature extractors and metrics for generated solar images."""
