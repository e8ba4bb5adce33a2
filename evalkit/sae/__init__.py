"""evalkit's SAE layer: variants registered into sae-lens, per-variant scores, loaders for every format.

Importing this package registers the `cosine` and `topafa` inference classes and the `cosine`, `topafa` and
`aligned_topk` training classes into sae-lens (once), so `SAE.load_from_disk` rebuilds evalkit's variants.
"""

from __future__ import annotations

from evalkit.sae.loaded import LoadedSAE
from evalkit.sae.loaders import FORMATS, load_saes
from evalkit.sae.score import NotFoldableError, fold_decoder_norms, has_unit_decoder_rows, score
from evalkit.sae.training import (
    AUX_K_COEFFICIENT,
    AlignedTopKTrainingSAE,
    AlignedTopKTrainingSAEConfig,
    CosineTrainingSAE,
    CosineTrainingSAEConfig,
    TopAFATrainingSAE,
    TopAFATrainingSAEConfig,
)
from evalkit.sae.training_unit import register_training_variants
from evalkit.sae.variants import (
    CosineSAE,
    CosineSAEConfig,
    TopAFASAE,
    TopAFASAEConfig,
    register_inference_variants,
    topafa_k,
)

register_inference_variants()
register_training_variants()

__all__ = [
    "AUX_K_COEFFICIENT",
    "FORMATS",
    "AlignedTopKTrainingSAE",
    "AlignedTopKTrainingSAEConfig",
    "CosineSAE",
    "CosineSAEConfig",
    "CosineTrainingSAE",
    "CosineTrainingSAEConfig",
    "LoadedSAE",
    "NotFoldableError",
    "TopAFASAE",
    "TopAFASAEConfig",
    "TopAFATrainingSAE",
    "TopAFATrainingSAEConfig",
    "fold_decoder_norms",
    "has_unit_decoder_rows",
    "load_saes",
    "score",
    "topafa_k",
]
