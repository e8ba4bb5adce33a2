"""One module per SAE variant evalkit adds or changes; see evalkit.sae.registration (VARIANT_MODULES)."""
