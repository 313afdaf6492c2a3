"""Training: datasets, encoders, MLA and its baselines, evaluation (torch)."""
