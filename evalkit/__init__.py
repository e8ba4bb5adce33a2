"""evalkit: an evaluation harness for sparse autoencoders. Layers (README, "Architecture"): core → sae → metrics →
world/sources → engine → autointerp/reports → app. Importing the package imports nothing else."""
