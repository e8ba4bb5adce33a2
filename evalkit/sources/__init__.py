"""Activation sources: every one yields `evalkit.batch.ActivationBatch` lazily and describes itself for
run.json."""

from __future__ import annotations

from evalkit.sources.base import ActivationSource, SourceInfo, check_d_in
from evalkit.sources.factory import model_dataset_source, open_source
from evalkit.sources.files import ActivationFileSource
from evalkit.sources.labels import LabelFile, LabelledSource
from evalkit.sources.models import ModelSource, load_model, resolve_hook
from evalkit.sources.world_source import world_source

__all__ = [
    "ActivationFileSource",
    "ActivationSource",
    "LabelFile",
    "LabelledSource",
    "ModelSource",
    "SourceInfo",
    "check_d_in",
    "load_model",
    "model_dataset_source",
    "open_source",
    "resolve_hook",
    "world_source",
]
