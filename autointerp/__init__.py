"""Auto-interpretability: example sampling, explainers, scorers, the LLM client and the offline baselines.

Call sequence (per SAE): `ExampleCollector(d_sae, latents, config)`, `update(tokens_BS, codes_BSF,
special_BS)` per batch, `finish()`, then `run_autointerp(examples, decode, config, cache_dir)`.
"""

from autointerp.client import LLMClient, LLMRequestError, Usage
from autointerp.config import AutointerpConfig
from autointerp.observer import SEQ_INDEX_KEY, AutointerpObserver
from autointerp.pipeline import (
    AUTOINTERP_COLUMNS,
    CONTROL,
    AutointerpResult,
    AutointerpRow,
    config_for_mode,
    example_records,
    run_autointerp,
)
from autointerp.sampling import ExampleCollector, LatentExamples, Window

__all__ = [
    "SEQ_INDEX_KEY",
    "AutointerpObserver",
    "example_records",
    "AUTOINTERP_COLUMNS",
    "CONTROL",
    "AutointerpConfig",
    "AutointerpResult",
    "AutointerpRow",
    "ExampleCollector",
    "LLMClient",
    "LLMRequestError",
    "LatentExamples",
    "Usage",
    "Window",
    "config_for_mode",
    "run_autointerp",
]
