"""Auto-interpretability: example sampling, explainers, scorers, the LLM client and the offline baselines.

Call sequence (per SAE): `ExampleCollector(d_sae, latents, config)`, `update(tokens_BS, codes_BSF,
special_BS)` per batch, `finish()`, then `run_autointerp(examples, decode, config, cache_dir)`.
"""
