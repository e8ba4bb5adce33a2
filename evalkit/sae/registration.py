"""Registration of evalkit's SAE classes into sae-lens' registries, done where those registries are first used.

sae-lens looks classes up by cfg.json's `architecture` name (`SAE.load_from_disk`, `get_sae_training_class`); the
loaders and the zoo call `ensure_registered()` before such a look-up, so importing a module never registers anything.
"""

from __future__ import annotations


def ensure_registered() -> None:
    """Register the inference and training classes once (idempotent; sae-lens' registry raises on a repeat)."""
    from evalkit.sae.training_unit import register_training_variants
    from evalkit.sae.variants import register_inference_variants

    register_inference_variants()
    register_training_variants()
