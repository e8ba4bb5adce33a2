"""Defaults the command line shows in its help: here, in a module with no heavy imports, so `--help` stays fast."""

DEFAULT_BATCH_TOKENS = 4096
"""Tokens per batch (sources round down to whole sequences)."""
DTYPE_NAMES = ("bfloat16", "float16", "float32", "float64")
"""torch dtypes an SAE can be evaluated in (`--dtype`), by their torch attribute name."""
WORLD_SIZE_NAMES = ("default", "small")
"""Names of evalkit.world.build.SIZES (a test keeps the two equal); 'small' is a seconds-scale world for tests."""
DEFAULT_STDERR_BLOCKS = 32
"""Jackknife blocks of whole sequences for token-level standard errors (`--stderr-blocks`; metrics.jackknife)."""
