"""evalkit's SAE layer: variants registered into sae-lens, per-variant scores, loaders for every format.

Nothing is imported here. evalkit's classes are registered into sae-lens' registries by
`evalkit.sae.registration.ensure_registered()`, which the code that looks classes up by name calls first (the
loaders and the zoo); call it yourself before `SAE.load_from_disk` on a folder holding an evalkit variant.
"""
