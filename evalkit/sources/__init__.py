"""Activation sources: every one yields `evalkit.core.batch.ActivationBatch` lazily and describes itself for
run.json."""
