"""The flare classifier and the synthetic-augmentation experiment."""
