"""Validation of a SAEBench-format JSON against SAEBench's own CoreEvalOutput (skips when sae-bench is absent)."""

from __future__ import annotations

import pytest


def validate_with_saebench(doc: dict) -> None:
    """SAEBench 0.6.0's pydantic model accepts `doc` (pytest skips when sae-bench is not installed)."""
    eval_output = pytest.importorskip("sae_bench.evals.core.eval_output")
    from pydantic import TypeAdapter

    TypeAdapter(eval_output.CoreEvalOutput).validate_python(doc)
