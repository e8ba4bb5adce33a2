"""Readers for each on-disk SAE format; `evalkit.sae.loaders.formats.load_saes` detects the format and loads."""
